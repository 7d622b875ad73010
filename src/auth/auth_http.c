/* API keys over REST (docs/api.md, "API keys"): GET and POST /v1/keys, DELETE
 * /v1/keys/{name}, all admin. The secret is in the POST answer only. */
#include <stdlib.h>
#include <string.h>

#include "steward/auth.h"
#include "steward/clock.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"

static const char *actor(const struct http_req *req)
{
    return req->who ? req->who->name : NULL;
}

static void list_keys(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"limit", "cursor", NULL};
    int limit;
    const char *cursor;
    json_t *errs = json_array();
    http_list_params_into(req, errs, &limit, &cursor);
    http_unknown_query(req, allowed, errs);
    int64_t before = http_id_cursor(cursor, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *items = NULL;
    long long next = 0;
    int rc = auth_keys_list(ctx, limit, before, &items, &next);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    json_t *nc = http_next_cursor(next);
    http_json(resp, 200, json_pack("{s:o, s:o}", "items", items, "next_cursor", nc));
}

static void create_key(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, true))
        return;
    static const char *const allowed[] = {"name", "scope", "expires_at", NULL};
    json_t *errs = json_array();
    jv_unknown_fields(req->body, allowed, "", errs);
    const char *name = NULL, *scope_name = NULL;
    if (jv_string(req->body, "name", "", true, 1, AUTH_NAME_MAX, &name, errs) == 1 &&
        !auth_name_valid(name))
        jv_error(errs, "name", "must be 1 to %d of A-Z a-z 0-9 . _ -", AUTH_NAME_MAX);
    enum auth_scope scope = AUTH_NONE;
    if (jv_string(req->body, "scope", "", true, 1, 16, &scope_name, errs) == 1 &&
        auth_scope_parse(scope_name, &scope) != 0)
        jv_error(errs, "scope", "must be read, service or admin");
    int64_t expires_us = 0;
    json_t *exp = json_object_get(req->body, "expires_at");
    if (exp && !json_is_null(exp)) {
        if (jv_time(req->body, "expires_at", "", false, &expires_us, errs) == 1 &&
            expires_us <= clock_wall_us())
            jv_error(errs, "expires_at", "must be in the future");
    }
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    char secret[AUTH_SECRET_CAP];
    json_t *out = NULL;
    int rc = auth_create(ctx, name, scope, expires_us, actor(req), secret, sizeof(secret), &out);
    if (rc == ST_ECONFLICT) {
        http_problem(resp, 409, "an active key has that name; revoke it first");
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    json_object_set_new(out, "secret", json_string(secret));
    memset(secret, 0, sizeof(secret));
    http_json(resp, 201, out); /* every answer carries Cache-Control: no-store */
}

static void revoke_key(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *name = http_param(req, "name");
    if (!name || !auth_name_valid(name)) {
        json_t *errs = json_array();
        jv_error(errs, "name", "must be 1 to %d of A-Z a-z 0-9 . _ -", AUTH_NAME_MAX);
        http_invalid(resp, errs);
        return;
    }
    int rc = auth_revoke(ctx, name, actor(req));
    if (rc == ST_ENOTFOUND) {
        http_problem(resp, 404, "no active key has that name");
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    resp->status = 204;
}

int auth_http_register(struct router *r, struct auth *a)
{
    int rc = 0;
    rc |= http_route(r, "GET", "/v1/keys", AUTH_ADMIN, list_keys, a);
    rc |= http_route(r, "POST", "/v1/keys", AUTH_ADMIN, create_key, a);
    rc |= http_route(r, "DELETE", "/v1/keys/{name}", AUTH_ADMIN, revoke_key, a);
    return rc;
}
