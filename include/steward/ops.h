/* Operations: liveness, readiness and the OpenAPI document (GET /livez, /readyz,
 * /openapi.yaml). ops.c holds the readiness check and its SQL; ops_http.c the routes. */
#ifndef STEWARD_OPS_H
#define STEWARD_OPS_H

#include <stdbool.h>
#include <stdatomic.h>
#include <stddef.h>

struct pool;
struct router;

struct ops_ctx {
    struct pool *pool;
    /* NULL when notifications flow; else why not (the listener, wired by app.c) */
    const char *(*listen_problem)(void *arg);
    void *listen_arg;
    /* Set by the app at SIGTERM (any thread): /readyz then answers 503 while every other
     * route is still served, so a load balancer's health check takes the instance out. */
    atomic_bool draining;
};

/* The OpenAPI document compiled into the binary. */
extern const char ops_openapi[];
extern const size_t ops_openapi_len;

/* Reads the schema version the database is at into *version, and whether the server
 * is read-only (a standby: the connection is then discarded). Returns ST_*. */
int ops_schema_version(struct ops_ctx *o, long long *version, bool *read_only);
/* The schema version this binary expects (the newest embedded migration). */
int ops_schema_expected(void);

int ops_http_register(struct router *r, struct ops_ctx *ctx);

#endif
