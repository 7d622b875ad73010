/* The application context: everything the process owns, created by app_serve and
 * passed down explicitly. There is no other process-wide mutable state (the one
 * thread-locals are the dbpipe's binding of an HTTP loop thread to its own lane, and the
 * log scope the transports set while a request is handled, see steward/log.h). */
#ifndef STEWARD_APP_H
#define STEWARD_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "steward/auth.h"
#include "steward/config.h"
#include "steward/http_server.h"
#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/ops.h"
#include "steward/pool.h"
#include "steward/router.h"
#include "steward/sched.h"
#include "steward/workq.h"
#include "steward/ws.h"

/* What GET /metrics reads (src/app/exporter.c): all borrowed. */
struct exporter_sources {
    struct metrics *m;
    const struct router *router; /* names the route slots of m */
    struct pool *pool;
    struct dbpipe *dbpipe; /* may be NULL */
};

struct lessons;
struct audit;
struct planner;
struct bonds;
struct users;
struct scouts;
struct healer;
struct healer_route;

/* How the open-file limit is shared. */
struct app_fd_budget {
    long nofile;              /* RLIMIT_NOFILE (soft, after raising it to the hard one) */
    long reserve;             /* the pool, the listener, listeners, loops, files */
    int http_max_connections; /* STEWARD_HTTP_MAX_CONNECTIONS, or less */
    int ws_max_connections;   /* STEWARD_WS_MAX_CONNECTIONS, or less */
};

struct app {
    struct config cfg;
    struct logger log;
    int64_t started_us;
    struct pool *pool;
    struct dbpipe *dbpipe;               /* pipelined hot-path statements (bonds) */
    struct http_loop_guest dbpipe_guest; /* the dbpipe's lanes on the HTTP loops */
    struct auth *auth;
    struct listener *listener;     /* the one LISTEN connection (scouts and auth channels) */
    struct auth_verifier verifier; /* auth as the transports see it */
    struct metrics *metrics;
    struct router router;
    struct workq *workq;
    struct sched *sched; /* the periodic jobs (healer, scouts, auth), run on workq */
    struct http_server *http;
    int http_loops;           /* resolved STEWARD_HTTP_LOOPS */
    struct app_fd_budget fdb; /* the connection caps the open-file limit allows */
    struct ws_server *ws;
    struct ops_ctx ops;
    struct exporter_sources msrc;
    struct lessons *lessons;
    struct audit *audit;
    struct planner *planner;
    struct bonds *bonds;
    struct users *users;
    struct scouts *scouts;
    struct healer *healer;
    struct deck *deck;                 /* the Observation Deck's files and overview */
    struct healer_route *route_labels; /* how the healer names the metrics' route slots */
};

/* The process's threads, event loops and lanes. */
struct app_sizing {
    int http_loops;     /* HTTP event loops */
    int http_threads;   /* HTTP handler threads */
    int dbpipe_threads; /* database threads of the dbpipe */
    int dbpipe_lanes;   /* pipelined lanes, one per HTTP loop at most */
    int worker_threads; /* the work queue (device work and periodic jobs) */
};

/* The descriptor budget: the configured caps when nofile holds them next to the
 * reserve (db_pool_size + 2 for the listener and a spare, 2 per HTTP loop, 64 for the
 * listening sockets, migrations and files), else both lowered in proportion so that
 * their sum fits (each at least 1). nofile < 1: unknown, the caps as configured. */
struct app_fd_budget app_fd_budget(const struct config *cfg, long nofile, int http_loops);

/* The sizing rules, from the configuration and the online CPU count (cpus < 1: unknown):
 * - http_loops: STEWARD_HTTP_LOOPS, or when 0 one per two CPUs (1 below 4 CPUs); never
 *   more than http_threads (an event loop keeps a core busy; more loops than cores only
 *   add wake-ups);
 * - http_threads, worker_threads: as configured;
 * - dbpipe_threads: a quarter of the pool, clamped to 1..4;
 * - dbpipe_lanes: half the pool (the rest always serves everything else), at most one
 *   per HTTP loop. */
struct app_sizing app_size(const struct config *cfg, long cpus);

/* The commands of docs/operations.md. Each returns the process exit status. */
int app_serve(void);
int app_migrate(void);
int app_keys_create(const char *name, const char *scope);
int app_keys_revoke(const char *name);
int app_healthcheck(void);
/* Prints the route table ("METHOD /pattern" per line, plus " scope" with the required
 * scope name (none, read, service, admin) when with_scope is true) without touching the
 * database; the tests compare it with openapi.yaml and with the scope rules. */
int app_routes(bool with_scope);

#endif
