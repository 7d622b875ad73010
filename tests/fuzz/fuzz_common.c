#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/exporter.h"
#include "steward/app.h"
#include "steward/bonds.h"
#include "steward/crypto.h"
#include "steward/healer.h"
#include "steward/lessons.h"
#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/planner.h"
#include "steward/pool.h"
#include "steward/scouts.h"
#include "steward/users.h"
#include "steward/workq.h"
#include "steward/ws.h"

/* A unix socket directory that does not exist: connecting fails at once. */
#define DEAD_DB "host=/nonexistent/steward-fuzz port=1 dbname=steward"

static struct fuzz_world world;
static bool built;
static struct logger quiet;
static struct app app; /* only its ops/metrics sources are used, for registration */

void fuzz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "FUZZ FAILURE: %s: %s\n", what, detail ? detail : "");
    abort();
}

/* At exit, before libraries tear down their own state: a hello job may still run on the
 * work queue's thread (it tries the absent database), and a thread that outlives exit's
 * cleanup crashed once, after libFuzzer had finished. */
static void world_drain(void)
{
    workq_free(app.workq);
    app.workq = NULL;
}

struct fuzz_world *fuzz_world_get(bool with_ws)
{
    if (built)
        return &world;
    built = true;
    quiet.level = LOG_ERROR;
    quiet.out = fopen("/dev/null", "w");
    if (!quiet.out)
        fuzz_fail("setup", "cannot open /dev/null");
    app.pool = pool_new(DEAD_DB, 2, 100, 1000, &quiet);
    app.metrics = metrics_new(ROUTER_MAX_ROUTES);
    app.workq = workq_new(1);
    if (!app.pool || !app.metrics || !app.workq)
        fuzz_fail("setup", "pool, metrics or workq");
    /* libcrypto registers its own exit cleanup on first use: use it first, so that the
     * drain (registered after) runs before it */
    unsigned char rnd[1];
    crypto_random(rnd, sizeof(rnd));
    atexit(world_drain);
    if (with_ws) {
        struct ws_server_opts wo = {.bind = "127.0.0.1", .port = 0, .hello_timeout_s = 10,
                                    .heartbeat_s = 30, .max_queue_bytes = 1 << 20,
                                    .max_connections = 16, .lg = &quiet,
                                    .metrics = app.metrics};
        char err[256];
        app.ws = ws_server_new(&wo, err, sizeof(err));
        if (!app.ws)
            fuzz_fail("ws_server_new", err);
    }
    app.lessons = lessons_new(app.pool, &quiet, app.metrics, true, 3600);
    app.planner = planner_new(app.pool, &quiet, app.lessons);
    struct scouts_settings ss = {.proposal_ttl_days = 30, .ack_timeout_s = 300,
                                 .max_delivery_attempts = 10, .max_inflight = 32,
                                 .ws_heartbeat_s = 30};
    app.scouts = scouts_new(app.pool, &quiet, app.metrics, app.workq, app.ws, app.lessons, &ss);
    app.bonds = bonds_new(app.pool, &quiet, NULL);
    /* erasure's validation is fuzzed with the bonds target (no parts: the database is
     * absent anyway) */
    app.users = users_new(app.pool, &quiet, NULL);
    if (!app.lessons || !app.planner || !app.scouts || !app.bonds || !app.users)
        fuzz_fail("setup", "capabilities");
    router_init(&world.router);
    app.ops.pool = app.pool;
    app.msrc.m = app.metrics;
    app.msrc.router = &world.router;
    app.msrc.pool = app.pool;
    int rc = ops_http_register(&world.router, &app.ops);
    rc |= exporter_register(&world.router, &app.msrc);
    rc |= lessons_http_register(&world.router, app.lessons);
    rc |= planner_http_register(&world.router, app.planner);
    rc |= bonds_http_register(&world.router, app.bonds);
    rc |= users_http_register(&world.router, app.users);
    rc |= scouts_http_register(&world.router, app.scouts);
    /* the healer's routes are registered with a NULL context: the router and the
     * scope table are what the router target checks; its handlers are not fuzzed */
    rc |= healer_http_register(&world.router, NULL);
    if (with_ws)
        rc |= scouts_ws_register(app.ws, app.scouts);
    if (rc != 0)
        fuzz_fail("setup", "route registration");
    world.ws = app.ws;
    return &world;
}
