#include "steward/app.h"
#include "unit.h"

/* The defaults of STEWARD_DB_POOL_SIZE, STEWARD_HTTP_THREADS, STEWARD_HTTP_LOOPS and
 * STEWARD_WORKER_THREADS. */
static struct config defaults(void)
{
    return (struct config){
        .db_pool_size = 8, .http_threads = 4, .http_loops = 0, .worker_threads = 4};
}

static void check_http_loops(void)
{
    struct config c = defaults();
    /* one loop per two CPUs, one below four CPUs (or when the count is unknown) */
    CHECK(app_size(&c, 1).http_loops == 1);
    CHECK(app_size(&c, 2).http_loops == 1);
    CHECK(app_size(&c, 3).http_loops == 1);
    CHECK(app_size(&c, 4).http_loops == 2);
    CHECK(app_size(&c, 7).http_loops == 3);
    CHECK(app_size(&c, 0).http_loops == 1);
    CHECK(app_size(&c, -1).http_loops == 1);
    /* never more than the handler threads */
    CHECK(app_size(&c, 16).http_loops == 4);
    c.http_threads = 16;
    CHECK(app_size(&c, 16).http_loops == 8);
    /* a configured count wins over the CPUs, still capped by the threads */
    c.http_loops = 3;
    CHECK(app_size(&c, 64).http_loops == 3);
    CHECK(app_size(&c, 1).http_loops == 3);
    c.http_threads = 2;
    CHECK(app_size(&c, 1).http_loops == 2);
    CHECK(app_size(&c, 1).http_threads == 2);
}

static void check_dbpipe_threads(void)
{
    struct config c = defaults();
    CHECK(app_size(&c, 2).dbpipe_threads == 2); /* a quarter of 8 */
    int pools[] = {1, 3, 4, 7, 12, 16, 17, 40, 512};
    int want[] = {1, 1, 1, 1, 3, 4, 4, 4, 4};
    int ok = 0;
    for (int i = 0; i < 9; i++) {
        c.db_pool_size = pools[i];
        ok += app_size(&c, 2).dbpipe_threads == want[i];
    }
    CHECK(ok == 9);
}

static void check_lanes(void)
{
    struct config c = defaults();
    /* half the pool, at most one per HTTP loop */
    CHECK(app_size(&c, 2).dbpipe_lanes == 1);
    CHECK(app_size(&c, 8).dbpipe_lanes == 4);
    c.http_threads = 64;
    CHECK(app_size(&c, 32).http_loops == 16);
    CHECK(app_size(&c, 32).dbpipe_lanes == 4);
    c.db_pool_size = 100;
    c.http_loops = 3;
    CHECK(app_size(&c, 32).dbpipe_lanes == 3);
    c.db_pool_size = 1;
    CHECK(app_size(&c, 32).dbpipe_lanes == 0);
    c.db_pool_size = 5;
    CHECK(app_size(&c, 32).dbpipe_lanes == 2);
}

static void check_workers(void)
{
    struct config c = defaults();
    CHECK(app_size(&c, 2).worker_threads == 4);
    c.worker_threads = 7;
    c.http_threads = 9;
    struct app_sizing z = app_size(&c, 2);
    CHECK(z.worker_threads == 7);
    CHECK(z.http_threads == 9);
}

/* Behind a transaction-mode pooler: no lanes, database threads half the pool (1 to 8). */
static void check_txn_pooler(void)
{
    struct config c = defaults();
    c.database_pooler_txn = true;
    struct app_sizing z = app_size(&c, 8);
    CHECK(z.dbpipe_lanes == 0);
    CHECK(z.dbpipe_threads == 4);
    c.db_pool_size = 1;
    CHECK(app_size(&c, 8).dbpipe_threads == 1);
    c.db_pool_size = 64;
    CHECK(app_size(&c, 8).dbpipe_threads == 8);
    CHECK(app_size(&c, 8).http_loops == 4); /* the loops stay */
}

/* The connection caps share the open-file limit with the reserve. */
static void check_fd_budget(void)
{
    struct config c = defaults();
    c.http_max_connections = 16384; /* the defaults of the two caps */
    c.ws_max_connections = 20000;
    /* room enough: the caps as configured */
    struct app_fd_budget b = app_fd_budget(&c, 1048576, 1);
    CHECK(b.http_max_connections == 16384 && b.ws_max_connections == 20000);
    CHECK(b.reserve == 8 + 2 + 2 + 64);
    /* unknown limit: as configured */
    CHECK(app_fd_budget(&c, 0, 1).ws_max_connections == 20000);
    /* 20,000 descriptors: both lowered in proportion, the sum fits */
    b = app_fd_budget(&c, 20000, 1);
    CHECK(b.http_max_connections + b.ws_max_connections + b.reserve == 20000);
    CHECK(b.http_max_connections < 16384 && b.ws_max_connections < 20000);
    CHECK(b.http_max_connections > 8000 && b.ws_max_connections > 10000);
    /* a tiny limit still leaves one of each */
    b = app_fd_budget(&c, 10, 1);
    CHECK(b.http_max_connections >= 1 && b.ws_max_connections >= 1);
    /* a bigger pool takes more of the reserve */
    c.db_pool_size = 100;
    CHECK(app_fd_budget(&c, 20000, 4).reserve == 100 + 2 + 8 + 64);
}

int main(void)
{
    check_fd_budget();
    check_http_loops();
    check_txn_pooler();
    check_dbpipe_threads();
    check_lanes();
    check_workers();
    return unit_done();
}
