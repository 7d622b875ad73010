/* The operational routes: GET /livez, /readyz and /openapi.yaml. */
#include "steward/ops.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/err.h"
#include "steward/http.h"

static void livez(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    (void)ctx;
    (void)req;
    http_json(resp, 200, json_pack("{s:s}", "status", "ok"));
}

static void readyz(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    (void)req;
    struct ops_ctx *o = ctx;
    if (atomic_load(&o->draining)) {
        http_problem(resp, 503, "draining: this instance is shutting down");
        return;
    }
    long long version = -1;
    bool read_only = false;
    int rc = ops_schema_version(o, &version, &read_only);
    if (rc != ST_OK) {
        http_problem(resp, 503, "the database is unreachable");
        http_header(resp, "Retry-After", "1");
        return;
    }
    if (read_only) {
        http_problem(resp, 503,
                     "the database server is read-only (a standby); no writable "
                     "primary is reachable");
        http_header(resp, "Retry-After", "1");
        return;
    }
    if (version != ops_schema_expected()) {
        char d[128];
        snprintf(d, sizeof(d), "schema version %lld, this binary expects %d", version,
                 ops_schema_expected());
        http_problem(resp, 503, d);
        http_header(resp, "Retry-After", "5");
        return;
    }
    const char *listen = o->listen_problem ? o->listen_problem(o->listen_arg) : NULL;
    if (listen) {
        http_problem(resp, 503, listen);
        http_header(resp, "Retry-After", "5");
        return;
    }
    http_json(resp, 200,
              json_pack("{s:s, s:I}", "status", "ready", "schema_version", (json_int_t)version));
}

static void openapi(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    (void)ctx;
    (void)req;
    resp->status = 200;
    resp->text = malloc(ops_openapi_len + 1);
    if (!resp->text) {
        http_problem(resp, 500, "out of memory");
        return;
    }
    memcpy(resp->text, ops_openapi, ops_openapi_len + 1);
    resp->text_len = ops_openapi_len;
    resp->content_type = "application/yaml";
}

int ops_http_register(struct router *r, struct ops_ctx *ctx)
{
    int rc = 0;
    rc |= http_route(r, "GET", "/livez", AUTH_NONE, livez, ctx);
    rc |= http_route(r, "GET", "/readyz", AUTH_NONE, readyz, ctx);
    rc |= http_route(r, "GET", "/openapi.yaml", AUTH_NONE, openapi, ctx);
    return rc;
}
