/* HTTP adapter of the planner (docs/api.md routes): validates requests, calls planner.c,
 * renders results. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"
#include "steward/planner.h"

#include "planner_int.h"

#define CONFIG_INT_MAX 2147483647LL
#define ERROR_CODE_MAX 128

/* Path parameter post_id: printable, 1..PLANNER_POST_ID_MAX characters. */
static const char *post_id_param(const struct http_req *req, json_t *errs)
{
    const char *post_id = http_param(req, "post_id");
    if (!post_id || !jv_is_printable_id(post_id, PLANNER_POST_ID_MAX)) {
        jv_error(errs, "post_id", "must be 1 to %d printable characters", PLANNER_POST_ID_MAX);
        return NULL;
    }
    return post_id;
}

/* Reads an array of metric points under name (checking min..max entries). On success
 * *out is a malloc'd array (NULL when empty) the caller frees; returns false after
 * adding errors. */
static bool parse_points(const json_t *body, const char *name, size_t min, size_t max,
                         bool required, bool *present, struct planner_point **out, size_t *n,
                         json_t *errs)
{
    static const char *const allowed[] = {"timestamp", "impressions", "engagements", NULL};
    *out = NULL;
    *n = 0;
    *present = false;
    json_t *arr = json_object_get(body, name);
    if (!arr || json_is_null(arr)) {
        if (required)
            jv_error(errs, name, "is required");
        return !required;
    }
    *present = true;
    if (!json_is_array(arr) || json_array_size(arr) < min || json_array_size(arr) > max) {
        jv_error(errs, name, "must be an array of %zu to %zu points", min, max);
        return false;
    }
    size_t count = json_array_size(arr);
    struct planner_point *pts = count ? calloc(count, sizeof(*pts)) : NULL;
    if (count && !pts) {
        jv_error(errs, name, "too many points for the memory available");
        return false;
    }
    size_t before = json_array_size(errs);
    for (size_t i = 0; i < count; i++) {
        char prefix[48];
        snprintf(prefix, sizeof(prefix), "%s[%zu]", name, i);
        json_t *pt = json_array_get(arr, i);
        if (!json_is_object(pt)) {
            jv_error(errs, prefix, "must be an object");
            continue;
        }
        jv_unknown_fields(pt, allowed, prefix, errs);
        jv_time(pt, "timestamp", prefix, true, &pts[i].ts_us, errs);
        jv_int(pt, "impressions", prefix, true, 0, LLONG_MAX, &pts[i].impressions, errs);
        jv_int(pt, "engagements", prefix, true, 0, LLONG_MAX, &pts[i].engagements, errs);
    }
    if (json_array_size(errs) != before) {
        free(pts);
        return false;
    }
    *out = pts;
    *n = count;
    return true;
}

/* POST /v1/posts/{post_id}/metrics */
static void metrics_post(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    static const char *const allowed[] = {"points", NULL};
    if (!http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    const char *post_id = post_id_param(req, errs);
    jv_unknown_fields(req->body, allowed, "", errs);
    struct planner_point *pts = NULL;
    size_t n = 0;
    bool present;
    parse_points(req->body, "points", 1, PLANNER_MAX_POINTS, true, &present, &pts, &n, errs);
    if (json_array_size(errs) > 0) {
        free(pts);
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    long long stored = 0;
    int rc = planner_metrics_store(p, post_id, pts, n, &stored);
    free(pts);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, json_pack("{s:I}", "stored", (json_int_t)stored));
}

/* POST /v1/posts/{post_id}/plan */
static void plan_post(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    static const char *const allowed[] = {"now", "metrics", "claim", NULL};
    if (!http_body_object(req, resp, false))
        return;
    json_t *errs = json_array();
    const char *post_id = post_id_param(req, errs);
    struct planner_plan_req pr = {0};
    struct planner_point *pts = NULL;
    if (req->body) {
        jv_unknown_fields(req->body, allowed, "", errs);
        pr.has_now = jv_time(req->body, "now", "", false, &pr.now_us, errs) == 1;
        jv_bool(req->body, "claim", "", false, &pr.claim, errs);
        parse_points(req->body, "metrics", 0, PLANNER_MAX_POINTS, false, &pr.has_metrics, &pts,
                     &pr.nmetrics, errs);
        pr.metrics = pts;
    }
    if (json_array_size(errs) > 0) {
        free(pts);
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = planner_plan(p, post_id, &pr, &out);
    free(pts);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, out);
}

static bool key_format_ok(const char *key)
{
    if (!key || strlen(key) != PLANNER_KEY_LEN - 1 || strncmp(key, "sheal_", 6) != 0)
        return false;
    for (const char *c = key + 6; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return false;
    return true;
}

/* PUT /v1/actions/{idempotency_key} */
static void action_put(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    static const char *const allowed[] = {"post_id", "action_type", "tier", "status",
                                          "outcome", "error_code", NULL};
    if (!http_body_object(req, resp, true))
        return;
    const char *key = http_param(req, "idempotency_key");
    json_t *errs = json_array();
    jv_unknown_fields(req->body, allowed, "", errs);
    bool key_ok = key_format_ok(key);
    if (!key_ok)
        jv_error(errs, "idempotency_key", "must be sheal_ followed by 32 lowercase hex digits");
    struct planner_outcome o = {0};
    const char *action_type = NULL, *tier = NULL;
    bool post_ok = jv_string(req->body, "post_id", "", true, 1, PLANNER_POST_ID_MAX, &o.post_id,
                             errs) == 1;
    if (post_ok && !jv_is_printable_id(o.post_id, PLANNER_POST_ID_MAX)) {
        jv_error(errs, "post_id", "must not contain control characters");
        post_ok = false;
    }
    enum planner_action by_type = PLANNER_COMMENT, by_tier = PLANNER_COMMENT;
    bool type_ok = false, tier_ok = false;
    if (jv_string(req->body, "action_type", "", true, 1, 16, &action_type, errs) == 1) {
        type_ok = planner_action_parse(action_type, &by_type) == 0;
        if (!type_ok)
            jv_error(errs, "action_type", "must be comment, edit or thread");
    }
    if (jv_string(req->body, "tier", "", true, 1, 16, &tier, errs) == 1) {
        tier_ok = planner_tier_parse(tier, &by_tier) == 0;
        if (!tier_ok)
            jv_error(errs, "tier", "must be tier_1, tier_2 or tier_3");
    }
    if (type_ok && tier_ok && by_type != by_tier) {
        jv_error(errs, "tier", "must be %s for action_type %s", planner_tier_name(by_type),
                 planner_action_name(by_type));
        tier_ok = false;
    }
    if (jv_string(req->body, "status", "", true, 1, 16, &o.status, errs) == 1 &&
        strcmp(o.status, "running") != 0 && strcmp(o.status, "success") != 0 &&
        strcmp(o.status, "failed") != 0)
        jv_error(errs, "status", "must be running, success or failed");
    jv_object(req->body, "outcome", "", false, &o.outcome, errs);
    if (jv_string(req->body, "error_code", "", false, 1, ERROR_CODE_MAX, &o.error_code, errs) ==
            1 &&
        !jv_is_printable_id(o.error_code, ERROR_CODE_MAX))
        jv_error(errs, "error_code", "must not contain control characters");
    o.action = by_type;
    if (key_ok && post_ok && type_ok && tier_ok) {
        char expect[PLANNER_KEY_LEN];
        if (planner_idempotency_key(o.post_id, o.action, expect) == 0 && strcmp(expect, key) != 0)
            jv_error(errs, "idempotency_key",
                     "must be the key of post_id, action_type and tier (%s)", expect);
    }
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = planner_record_outcome(p, key, &o, &out);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, out);
}

/* GET /v1/actions/{idempotency_key} */
static void action_get(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    const char *key = http_param(req, "idempotency_key");
    if (!key_format_ok(key)) {
        http_problem(resp, 404, "no action has this idempotency key");
        return;
    }
    json_t *out = NULL;
    int rc = planner_action_get(p, key, &out);
    if (rc != ST_OK) {
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no action has this idempotency key" : NULL);
        return;
    }
    http_json(resp, 200, out);
}

/* GET /v1/posts/{post_id}/actions */
static void actions_list(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    int limit;
    const char *cursor;
    if (!http_list_params(req, resp, &limit, &cursor))
        return;
    json_t *errs = json_array();
    const char *post_id = post_id_param(req, errs);
    static const char *const allowed[] = {"limit", "cursor", "needs_recovery", NULL};
    http_unknown_query(req, allowed, errs);
    bool needs_recovery = false;
    const char *nr = http_query(req, "needs_recovery");
    if (nr && strcmp(nr, "true") == 0)
        needs_recovery = true;
    else if (nr && strcmp(nr, "false") != 0)
        jv_error(errs, "needs_recovery", "must be true or false");
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_t *out = NULL;
    int rc = planner_actions_list(p, post_id, needs_recovery, limit, cursor, &out);
    if (rc == ST_EINVALID) {
        jv_error(errs, "cursor", "is not a next_cursor of this list");
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, out);
}

/* GET /v1/planner/config */
static void config_get(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    (void)req;
    json_t *out = NULL;
    int rc = planner_config_get(p, &out);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, out);
}

/* PUT /v1/planner/config: every field required; updated_at/updated_by (read-only, as
 * returned by GET) are accepted and ignored so a read-modify-write works. */
static void config_put(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct planner *p = ctx;
    static const char *const allowed[] = {"per_post_window_minutes", "min_samples_required",
                                          "cooldown_by_action_seconds", "max_actions_per_window",
                                          "max_attempts", "updated_at", "updated_by", NULL};
    static const char *const actions[] = {"comment", "edit", "thread", NULL};
    if (!http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    jv_unknown_fields(req->body, allowed, "", errs);
    struct planner_config c;
    memset(&c, 0, sizeof(c));
    jv_int(req->body, "per_post_window_minutes", "", true, 1, CONFIG_INT_MAX, &c.window_minutes,
           errs);
    jv_int(req->body, "min_samples_required", "", true, 1, CONFIG_INT_MAX, &c.min_samples, errs);
    jv_int(req->body, "max_actions_per_window", "", true, 1, CONFIG_INT_MAX, &c.max_actions,
           errs);
    jv_int(req->body, "max_attempts", "", true, 1, CONFIG_INT_MAX, &c.max_attempts, errs);
    json_t *cd = NULL;
    if (jv_object(req->body, "cooldown_by_action_seconds", "", true, &cd, errs) == 1) {
        jv_unknown_fields(cd, actions, "cooldown_by_action_seconds", errs);
        for (int i = 0; i < PLANNER_NACTIONS; i++)
            jv_int(cd, actions[i], "cooldown_by_action_seconds", true, 1, CONFIG_INT_MAX,
                   &c.cooldown_s[i], errs);
    }
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *out = NULL;
    int rc = planner_config_put(p, &c, req->who ? req->who->name : NULL, &out);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, out);
}

int planner_http_register(struct router *r, struct planner *p)
{
    int rc = 0;
    rc |= http_route(r, "POST", "/v1/posts/{post_id}/metrics", AUTH_SERVICE, metrics_post, p);
    rc |= http_route(r, "POST", "/v1/posts/{post_id}/plan", AUTH_SERVICE, plan_post, p);
    rc |= http_route(r, "GET", "/v1/posts/{post_id}/actions", AUTH_READ, actions_list, p);
    rc |= http_route(r, "PUT", "/v1/actions/{idempotency_key}", AUTH_SERVICE, action_put, p);
    rc |= http_route(r, "GET", "/v1/actions/{idempotency_key}", AUTH_READ, action_get, p);
    rc |= http_route(r, "GET", "/v1/planner/config", AUTH_READ, config_get, p);
    rc |= http_route(r, "PUT", "/v1/planner/config", AUTH_ADMIN, config_put, p);
    return rc;
}
