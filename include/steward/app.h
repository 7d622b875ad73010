/* The application context: everything the process owns, created by app_serve and
 * passed down explicitly. There is no other process-wide mutable state (the one
 * thread-local is the dbpipe's binding of an HTTP loop thread to its own lane). */
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
struct planner;
struct bonds;
struct scouts;
struct healer;
struct healer_route;

struct app {
    struct config cfg;
    struct logger log;
    int64_t started_us;
    struct pool *pool;
    struct dbpipe *dbpipe;               /* pipelined hot-path statements (bonds) */
    struct http_loop_guest dbpipe_guest; /* the dbpipe's lanes on the HTTP loops */
    struct auth *auth;
    struct auth_verifier verifier; /* auth as the transports see it */
    struct metrics *metrics;
    struct router router;
    struct workq *workq;
    struct http_server *http;
    int http_loops; /* resolved STEWARD_HTTP_LOOPS */
    struct ws_server *ws;
    struct ops_ctx ops;
    struct exporter_sources msrc;
    struct lessons *lessons;
    struct planner *planner;
    struct bonds *bonds;
    struct scouts *scouts;
    struct healer *healer;
    struct healer_route *route_labels; /* how the healer names the metrics' route slots */
};

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
