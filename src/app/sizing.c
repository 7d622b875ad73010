/* How many threads, event loops and pipelined lanes the process runs, from the
 * configuration and the CPU count (see app_size in steward/app.h). */
#include "steward/app.h"

struct app_sizing app_size(const struct config *cfg, long cpus)
{
    struct app_sizing z = {
        .http_threads = cfg->http_threads,
        .worker_threads = cfg->worker_threads,
    };
    /* HTTP event loops: one per two CPUs unless set (an event loop keeps a core busy on
     * its own; more loops than cores only add wake-ups), never more than handler threads. */
    z.http_loops = cfg->http_loops;
    if (z.http_loops == 0)
        z.http_loops = cpus >= 4 ? (int)(cpus / 2) : 1;
    if (z.http_loops > cfg->http_threads)
        z.http_loops = cfg->http_threads;
    /* Each HTTP loop thread pipelines its own hot-path statements on a lane, holding a
     * connection only while statements are in flight; lanes take at most half the pool,
     * so the rest always serves everything else. The HTTP handler threads, and any other
     * caller, use the database threads: a quarter of the pool (2 for the default 8),
     * 1 to 4. */
    z.dbpipe_threads = cfg->db_pool_size / 4;
    z.dbpipe_threads = z.dbpipe_threads < 1 ? 1 : z.dbpipe_threads > 4 ? 4 : z.dbpipe_threads;
    z.dbpipe_lanes = cfg->db_pool_size / 2;
    if (z.dbpipe_lanes > z.http_loops)
        z.dbpipe_lanes = z.http_loops;
    /* Behind a transaction-mode pooler a connection carries one transaction per round
     * trip (no pipeline), so there are no lanes, and more database threads (half the
     * pool, 1 to 8) keep statements of different requests in flight at once. */
    if (cfg->database_pooler_txn) {
        z.dbpipe_lanes = 0;
        z.dbpipe_threads = cfg->db_pool_size / 2;
        z.dbpipe_threads = z.dbpipe_threads < 1 ? 1 : z.dbpipe_threads > 8 ? 8 : z.dbpipe_threads;
    }
    return z;
}

struct app_fd_budget app_fd_budget(const struct config *cfg, long nofile, int http_loops)
{
    struct app_fd_budget b = {
        .nofile = nofile,
        .reserve = (long)cfg->db_pool_size + 2 + 2L * http_loops + 64,
        .http_max_connections = cfg->http_max_connections,
        .ws_max_connections = cfg->ws_max_connections,
    };
    if (nofile < 1)
        return b;
    long room = nofile - b.reserve;
    long want = (long)b.http_max_connections + b.ws_max_connections;
    if (want <= room || want <= 0)
        return b;
    if (room < 2)
        room = 2;
    long http = room * b.http_max_connections / want;
    if (http < 1)
        http = 1;
    if (http > room - 1)
        http = room - 1;
    b.http_max_connections = (int)http;
    b.ws_max_connections = (int)(room - http);
    return b;
}
