/* HTTP adapter of the scouts capability: validates requests and maps results. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scouts_int.h"
#include "steward/cursor.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"

#define USER_MAX USERS_ID_MAX
/* A batch of SCOUTS_BATCH_MAX items each at its longest (a 512-character reference, 2000
 * of reason and subject, 10000 of snippet, all possibly escaped) would pass 16 MiB; 8 MiB
 * holds 500 items of about 16 KiB of JSON each, far more than triage items carry. */
#define SCOUTS_BATCH_BODY_LIMIT (8u << 20)

static const char *actor(const struct http_req *req)
{
    return req->who ? req->who->name : "";
}

/* user_id follows the one rule of src/users (body field or path parameter). */
static void check_user_field(const json_t *body, const char **out, json_t *errs)
{
    if (jv_string(body, "user_id", "", true, 1, USER_MAX, out, errs) == 1 &&
        !users_id_valid(*out)) {
        jv_error(errs, "user_id", "must not contain control characters");
        *out = NULL;
    }
}

static bool path_user(const struct http_req *req, struct http_resp *resp, const char **user)
{
    *user = http_param(req, "user_id");
    if (!*user || !users_id_valid(*user)) {
        json_t *errs = json_array();
        jv_error(errs, "user_id", "must be 1 to %d printable characters", USER_MAX);
        http_invalid(resp, errs);
        return false;
    }
    return true;
}

static bool list_cursor(const char *cursor, struct http_resp *resp, int64_t *a, int64_t *b)
{
    if (cursor && cursor_decode(cursor, a, b) != 0) {
        json_t *errs = json_array();
        jv_error(errs, "cursor", "is not a cursor of this list");
        http_invalid(resp, errs);
        return false;
    }
    return true;
}

static void read_scout_fields(const json_t *body, struct scouts_scout_in *in, json_t *errs)
{
    bool b;
    long long days;
    if (jv_bool(body, "enabled", "", false, &b, errs) == 1)
        in->enabled = b;
    if (jv_bool(body, "auto_trash_spam", "", false, &b, errs) == 1)
        in->auto_trash_spam = b;
    if (jv_int(body, "device_inactivity_pause_days", "", false, 1, 3650, &days, errs) == 1)
        in->pause_days = days;
}

static void scout_create(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, true))
        return;
    static const char *const allowed[] = {
        "user_id", "provider", "enabled", "auto_trash_spam", "device_inactivity_pause_days", NULL};
    json_t *errs = json_array();
    struct scouts_scout_in in = {NULL, NULL, -1, -1, -1};
    jv_unknown_fields(req->body, allowed, "", errs);
    check_user_field(req->body, &in.user_id, errs);
    jv_string(req->body, "provider", "", true, 1, 64, &in.provider, errs);
    read_scout_fields(req->body, &in, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = scouts_scout_create(ctx, &in, actor(req), &out);
    if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 201, out);
}

static void scout_get(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    json_t *out = NULL;
    int rc = scouts_scout_get(ctx, http_param(req, "id"), &out);
    if (rc != ST_OK)
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no such scout" : NULL);
    else
        http_json(resp, 200, out);
}

static void scout_patch(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, true))
        return;
    static const char *const allowed[] = {
        "provider", "enabled", "auto_trash_spam", "device_inactivity_pause_days", "user_id", NULL};
    json_t *errs = json_array();
    struct scouts_scout_in in = {NULL, NULL, -1, -1, -1};
    jv_unknown_fields(req->body, allowed, "", errs);
    if (json_object_get(req->body, "user_id"))
        jv_error(errs, "user_id", "cannot be changed");
    jv_string(req->body, "provider", "", false, 1, 64, &in.provider, errs);
    read_scout_fields(req->body, &in, errs);
    if (json_object_size(req->body) == 0)
        jv_error(errs, "body", "name at least one field to change");
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = scouts_scout_patch(ctx, http_param(req, "id"), &in, actor(req), &out);
    if (rc != ST_OK)
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no such scout" : NULL);
    else
        http_json(resp, 200, out);
}

static void scout_delete(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    int rc = scouts_scout_delete(ctx, http_param(req, "id"), actor(req));
    if (rc != ST_OK)
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no such scout" : NULL);
    else
        http_json(resp, 204, NULL);
}

/* One triage verdict, the body of POST /v1/scouts/{id}/items or an element of a batch's
 * items (field names in errs start with prefix). Strings are borrowed from obj. */
static void parse_item(const json_t *obj, const char *prefix, struct scouts_item_in *in,
                       json_t *errs)
{
    static const char *const allowed[] = {"source_msg_ref", "verdict",     "reason", "subject",
                                          "snippet",        "source_type", NULL};
    memset(in, 0, sizeof(*in));
    if (!json_is_object(obj)) {
        jv_error(errs, prefix, "must be a JSON object");
        return;
    }
    const char *verdict = NULL;
    jv_unknown_fields(obj, allowed, prefix, errs);
    jv_string(obj, "source_msg_ref", prefix, true, 1, 512, &in->source_msg_ref, errs);
    if (jv_string(obj, "verdict", prefix, true, 1, 16, &verdict, errs) == 1) {
        if (strcmp(verdict, "spam") == 0) {
            in->spam = true;
        } else if (strcmp(verdict, "relevant") != 0) {
            char path[64];
            jv_error(errs, jv_path(path, sizeof(path), prefix, "verdict"),
                     "must be relevant or spam");
        }
    }
    jv_string(obj, "reason", prefix, false, 0, 2000, &in->reason, errs);
    jv_string(obj, "subject", prefix, false, 0, 2000, &in->subject, errs);
    jv_string(obj, "snippet", prefix, false, 0, 10000, &in->snippet, errs);
    jv_string(obj, "source_type", prefix, false, 1, 64, &in->source_type, errs);
}

/* An ingest's answer: out (stolen) with status, or the failure's problem. */
static void item_answer(struct http_resp *resp, int rc, int status, json_t *out)
{
    if (rc == ST_ENOTFOUND)
        http_error(resp, rc, "no such scout");
    else if (rc == ST_ECONFLICT)
        http_problem_slug(resp, 409, "scout-disabled", "the scout is disabled");
    else if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, status, out);
}

/* An ingest answered when its group is written (scouts_ingest_submit): the item and the
 * strings it points to, copied out of the request, in one block with the token. */
struct item_later {
    struct scouts_ingest_wait w; /* first: done gets &w */
    struct scouts_item_in in;
    struct http_deferred *d;
    char strings[];
};

static void item_done(struct scouts_ingest_wait *w)
{
    struct item_later *l = (struct item_later *)w;
    if (w->rc != ST_OK) {
        json_decref(w->out);
        w->out = NULL;
    }
    item_answer(http_deferred_resp(l->d), w->rc, w->status, w->out);
    http_deferred_finish(l->d);
    free(l);
}

/* Copies src into *at and points *dst at the copy (NULL stays NULL). */
static void copy_str(char **at, const char **dst, const char *src)
{
    if (!src)
        return;
    size_t n = strlen(src) + 1;
    memcpy(*at, src, n);
    *dst = *at;
    *at += n;
}

static struct item_later *item_later_new(const char *scout_id, const struct scouts_item_in *in)
{
    const char *all[] = {scout_id,    in->source_msg_ref, in->reason,
                         in->subject, in->snippet,        in->source_type};
    size_t size = sizeof(struct item_later);
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        size += all[i] ? strlen(all[i]) + 1 : 0;
    struct item_later *l = calloc(1, size);
    if (!l)
        return NULL;
    char *at = l->strings;
    l->in.spam = in->spam;
    copy_str(&at, &l->w.scout_id, scout_id);
    copy_str(&at, &l->in.source_msg_ref, in->source_msg_ref);
    copy_str(&at, &l->in.reason, in->reason);
    copy_str(&at, &l->in.subject, in->subject);
    copy_str(&at, &l->in.snippet, in->snippet);
    copy_str(&at, &l->in.source_type, in->source_type);
    l->w.in = &l->in;
    l->w.done = item_done;
    return l;
}

static void item_post(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    struct scouts_item_in in;
    parse_item(req->body, "", &in, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    const char *scout_id = http_param(req, "id");
    /* in the server, the thread is not held while the item's group is written */
    struct item_later *l = req->transport ? item_later_new(scout_id, &in) : NULL;
    if (l && (l->d = http_defer(req, resp)) != NULL) {
        scouts_ingest_submit(ctx, &l->w);
        return;
    }
    free(l);
    int status = 0;
    json_t *out = NULL;
    int rc = scouts_ingest(ctx, scout_id, &in, &status, &out);
    item_answer(resp, rc, status, out);
}

/* Problems reported for a batch at most; past that the 422 says how many more. */
#define BATCH_ERRORS_MAX 100

static void item_batch(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, true))
        return;
    static const char *const allowed[] = {"items", NULL};
    json_t *errs = json_array();
    jv_unknown_fields(req->body, allowed, "", errs);
    json_t *items = json_object_get(req->body, "items");
    size_t n = json_array_size(items);
    if (!json_is_array(items) || n < 1 || n > SCOUTS_BATCH_MAX) {
        jv_error(errs, "items", "must be an array of 1 to %d items", SCOUTS_BATCH_MAX);
        http_invalid(resp, errs);
        return;
    }
    struct scouts_item_in *in = calloc(n, sizeof(*in));
    if (!in) {
        json_decref(errs);
        http_error(resp, ST_ENOMEM, NULL);
        return;
    }
    size_t bad_items = 0;
    for (size_t i = 0; i < n; i++) {
        char prefix[32];
        snprintf(prefix, sizeof(prefix), "items[%zu]", i);
        size_t before = json_array_size(errs);
        parse_item(json_array_get(items, i), prefix, &in[i], errs);
        bad_items += json_array_size(errs) != before;
    }
    if (json_array_size(errs) > BATCH_ERRORS_MAX) {
        size_t more = json_array_size(errs) - BATCH_ERRORS_MAX;
        while (json_array_size(errs) > BATCH_ERRORS_MAX)
            json_array_remove(errs, json_array_size(errs) - 1);
        jv_error(errs, "items", "%zu more problems not listed (%zu items are invalid)", more,
                 bad_items);
    }
    if (json_array_size(errs) > 0) {
        free(in);
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = scouts_ingest_batch(ctx, http_param(req, "id"), in, n, &out);
    free(in);
    item_answer(resp, rc, 200, out);
}

static void scout_run(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, false))
        return;
    static const char *const allowed[] = {"cursor", NULL};
    json_t *errs = json_array();
    bool set_cursor = false;
    const char *cursor = NULL;
    if (req->body) {
        jv_unknown_fields(req->body, allowed, "", errs);
        json_t *c = json_object_get(req->body, "cursor");
        if (c && json_is_null(c))
            set_cursor = true;
        else if (c && jv_string(req->body, "cursor", "", false, 0, SCOUTS_RUN_CURSOR_MAX, &cursor,
                                errs) == 1)
            set_cursor = true;
    }
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = scouts_scout_run(ctx, http_param(req, "id"), set_cursor, cursor, &out);
    if (rc != ST_OK)
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no such scout" : NULL);
    else
        http_json(resp, 200, out);
}

static void scouts_list(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const known[] = {"user_id", "enabled", "limit", "cursor", NULL};
    json_t *errs = json_array();
    http_unknown_query(req, known, errs);
    int limit = 0;
    const char *cursor = NULL;
    http_list_params_into(req, errs, &limit, &cursor);
    int64_t a = 0, b = 0;
    if (cursor && cursor_decode(cursor, &a, &b) != 0)
        jv_error(errs, "cursor", "is not a cursor of this list");
    const char *user = http_query(req, "user_id");
    if (user && !jv_is_printable_id(user, USER_MAX))
        jv_error(errs, "user_id", "must be 1 to %d printable characters", USER_MAX);
    const char *en = http_query(req, "enabled");
    int enabled = -1;
    if (en && strcmp(en, "true") == 0)
        enabled = 1;
    else if (en && strcmp(en, "false") == 0)
        enabled = 0;
    else if (en)
        jv_error(errs, "enabled", "must be true or false");
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = scouts_scouts_list(ctx, user, enabled, limit, a, b, cursor != NULL, &out);
    if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 200, out);
}

static void proposals_list(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *user, *cursor;
    int limit;
    int64_t a = 0, b = 0;
    if (!path_user(req, resp, &user) || !http_list_params(req, resp, &limit, &cursor) ||
        !list_cursor(cursor, resp, &a, &b))
        return;
    const char *status = http_query(req, "status");
    if (status && !*status)
        status = NULL;
    if (status && strcmp(status, "queued") != 0 && strcmp(status, "delivered") != 0 &&
        strcmp(status, "acked") != 0 && strcmp(status, "failed") != 0 &&
        strcmp(status, "expired") != 0) {
        json_t *errs = json_array();
        jv_error(errs, "status", "must be queued, delivered, acked, failed or expired");
        http_invalid(resp, errs);
        return;
    }
    json_t *out = NULL;
    int rc = scouts_proposals_list(ctx, user, status, limit, a, b, cursor != NULL, &out);
    if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 200, out);
}

static void device_create(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    if (!http_body_object(req, resp, true))
        return;
    static const char *const allowed[] = {"user_id", "name", NULL};
    json_t *errs = json_array();
    const char *user = NULL, *name = NULL;
    jv_unknown_fields(req->body, allowed, "", errs);
    check_user_field(req->body, &user, errs);
    if (jv_string(req->body, "name", "", true, 1, 200, &name, errs) == 1 &&
        !jv_is_printable_id(name, 200))
        jv_error(errs, "name", "must not contain control characters");
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = scouts_device_create(ctx, user, name, actor(req), &out);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_header(resp, "Cache-Control", "no-store");
    http_json(resp, 201, out);
}

static void devices_list(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *user, *cursor;
    int limit;
    int64_t a = 0, b = 0;
    if (!path_user(req, resp, &user) || !http_list_params(req, resp, &limit, &cursor) ||
        !list_cursor(cursor, resp, &a, &b))
        return;
    json_t *out = NULL;
    int rc = scouts_devices_list(ctx, user, limit, a, b, cursor != NULL, &out);
    if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 200, out);
}

static void device_delete(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    int rc = scouts_device_delete(ctx, http_param(req, "id"), actor(req));
    if (rc != ST_OK)
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no such device" : NULL);
    else
        http_json(resp, 204, NULL);
}

int scouts_http_register(struct router *r, struct scouts *ctx)
{
    int rc = 0;
    rc |= http_route(r, "POST", "/v1/scouts", AUTH_ADMIN, scout_create, ctx);
    rc |= http_route(r, "GET", "/v1/scouts/{id}", AUTH_READ, scout_get, ctx);
    rc |= http_route(r, "PATCH", "/v1/scouts/{id}", AUTH_ADMIN, scout_patch, ctx);
    rc |= http_route(r, "DELETE", "/v1/scouts/{id}", AUTH_ADMIN, scout_delete, ctx);
    rc |= http_route(r, "GET", "/v1/scouts", AUTH_READ, scouts_list, ctx);
    rc |= http_route(r, "POST", "/v1/scouts/{id}/items", AUTH_SERVICE, item_post, ctx);
    rc |= http_route_sized(r, "POST", "/v1/scouts/{id}/items/batch", AUTH_SERVICE, item_batch, ctx,
                           SCOUTS_BATCH_BODY_LIMIT);
    rc |= http_route(r, "POST", "/v1/scouts/{id}/runs", AUTH_SERVICE, scout_run, ctx);
    rc |= http_route(r, "GET", "/v1/users/{user_id}/proposals", AUTH_READ, proposals_list, ctx);
    rc |= http_route(r, "POST", "/v1/devices", AUTH_ADMIN, device_create, ctx);
    rc |= http_route(r, "GET", "/v1/users/{user_id}/devices", AUTH_READ, devices_list, ctx);
    rc |= http_route(r, "DELETE", "/v1/devices/{id}", AUTH_ADMIN, device_delete, ctx);
    return rc;
}
