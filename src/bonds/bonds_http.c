/* HTTP adapter of the bond ledger: validates requests, calls src/bonds/bonds.c and turns
 * its answers into responses. Scopes are enforced by the router (read, service, admin). */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/bonds.h"

#include "bonds_int.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"
#include "steward/users.h"

/* The user_id path parameter, or NULL after answering 422 naming the field. */
static const char *user_param(const struct http_req *req, struct http_resp *resp)
{
    const char *id = http_param(req, "user_id");
    if (id && users_id_valid(id))
        return id;
    json_t *errs = json_array();
    jv_error(errs, "user_id", "must be 1 to %d printable characters (valid UTF-8)",
             USERS_ID_MAX);
    http_invalid(resp, errs);
    return NULL;
}

/* Answers a JSON text built by the capability (taking ownership of json). */
static void answer_text(struct http_resp *resp, int status, char *json, size_t len)
{
    resp->status = status;
    resp->text = json;
    resp->text_len = len;
    resp->content_type = "application/json";
}

/* A label (phase, risk level, ...): a string of 1..max printable characters. */
static int label(const json_t *obj, const char *key, const char *prefix, size_t max,
                 const char **out, json_t *errs)
{
    const char *s = NULL;
    json_t *scratch = json_array();
    int rc = jv_string(obj, key, prefix, false, 1, max, &s, scratch);
    if (rc == 1 && !bonds_valid_id(s, max))
        rc = -1;
    if (rc < 0) {
        char path[192];
        jv_error(errs, jv_path(path, sizeof(path), prefix, key),
                 "must be a string of 1 to %zu printable characters", max);
    }
    json_decref(scratch);
    if (rc == 1)
        *out = s;
    return rc;
}

static void detection_fields(const json_t *det, struct bonds_detection *d, json_t *errs)
{
    static const char *const allowed[] = {"phase",      "risk_level", "childhood_archetype",
                                          "egg_status", "confidence", "signals",
                                          "turn_count", NULL};
    static const char *const egg_allowed[] = {"status", NULL};
    static const char *const signals_allowed[] = {"primary", NULL};
    const char *pre = "detection";
    jv_unknown_fields(det, allowed, pre, errs);
    label(det, "phase", pre, BONDS_LABEL_MAX, &d->phase, errs);
    label(det, "risk_level", pre, BONDS_LABEL_MAX, &d->risk_level, errs);
    label(det, "childhood_archetype", pre, BONDS_ARCHETYPE_MAX, &d->archetype, errs);
    jv_number(det, "confidence", pre, false, &d->confidence, errs);
    long long turns;
    if (jv_int(det, "turn_count", pre, false, 0, INT64_MAX, &turns, errs) == 1) {
        d->has_turn_count = true;
        d->turn_count = turns;
    }
    json_t *egg = NULL, *signals = NULL;
    if (jv_object(det, "egg_status", pre, false, &egg, errs) == 1) {
        jv_unknown_fields(egg, egg_allowed, "detection.egg_status", errs);
        label(egg, "status", "detection.egg_status", BONDS_LABEL_MAX, &d->egg_status, errs);
    }
    if (jv_object(det, "signals", pre, false, &signals, errs) == 1) {
        jv_unknown_fields(signals, signals_allowed, "detection.signals", errs);
        jv_string(signals, "primary", "detection.signals", false, 0, BONDS_SIGNAL_MAX,
                  &d->primary_signal, errs);
    }
}

/* Reads the ulm_vector into nodes (room for BONDS_NODES_MAX). */
static void vector_fields(const json_t *vec, struct bonds_node *nodes, size_t *n, json_t *errs)
{
    if (json_object_size(vec) > BONDS_NODES_MAX) {
        jv_error(errs, "ulm_vector", "must have at most %d nodes", BONDS_NODES_MAX);
        return;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)vec, key, val)
    {
        char path[192];
        jv_path(path, sizeof(path), "ulm_vector", key);
        if (!bonds_valid_id(key, BONDS_NODE_MAX)) {
            jv_error(errs, path, "node names must be 1 to %d printable characters", BONDS_NODE_MAX);
            continue;
        }
        if (!json_is_number(val) || !isfinite(json_number_value(val))) {
            jv_error(errs, path, "must be a finite number");
            continue;
        }
        nodes[*n].name = key;
        nodes[*n].value = json_number_value(val);
        (*n)++;
    }
}

static void detections(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"detection", "ulm_vector", NULL};
    const char *user = user_param(req, resp);
    if (!user || !http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    struct bonds_detection d = {0};
    jv_unknown_fields(req->body, allowed, "", errs);
    json_t *det = NULL, *vec = NULL;
    if (jv_object(req->body, "detection", "", true, &det, errs) == 1)
        detection_fields(det, &d, errs);
    struct bonds_node *nodes = NULL;
    size_t n = 0;
    if (jv_object(req->body, "ulm_vector", "", false, &vec, errs) == 1 &&
        json_object_size(vec) > 0) {
        nodes = calloc(BONDS_NODES_MAX, sizeof(*nodes));
        if (!nodes) {
            json_decref(errs);
            http_error(resp, ST_ENOMEM, NULL);
            return;
        }
        vector_fields(vec, nodes, &n, errs);
    }
    if (json_array_size(errs) > 0) {
        free(nodes);
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    d.nodes = nodes;
    d.nnodes = n;
    char *json = NULL;
    size_t len = 0;
    int rc = bonds_detect(ctx, user, &d, &json, &len);
    free(nodes);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    answer_text(resp, 200, json, len);
}

static void got_bond(void *arg, int rc, char *json, size_t len, const char *etag)
{
    struct http_deferred *d = arg;
    struct http_resp *resp = http_deferred_resp(d);
    if (rc != ST_OK) {
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no bond entry for this user" : NULL);
    } else {
        answer_text(resp, 200, json, len);
        http_header(resp, "ETag", "%s", etag); /* the server answers 304 on If-None-Match */
    }
    http_deferred_finish(d);
}

static void get_bond(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *user = user_param(req, resp);
    if (!user)
        return;
    struct http_deferred *d = http_defer(req, resp);
    if (!d) {
        http_error(resp, ST_ENOMEM, NULL);
        return;
    }
    bonds_get(ctx, user, got_bond, d);
}

static void list_bonds(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    json_t *errs = json_array();
    const char *phase = http_query(req, "phase");
    const char *risk = http_query(req, "risk_level");
    const char *q = http_query(req, "user_id_prefix");
    if (q && !*q)
        q = NULL;
    if (q && !users_id_valid(q))
        jv_error(errs, "user_id_prefix", "must be 1 to %d printable characters",
                 USERS_ID_MAX);
    if (phase && !*phase)
        phase = NULL;
    if (risk && !*risk)
        risk = NULL;
    if (phase && !bonds_valid_id(phase, BONDS_LABEL_MAX))
        jv_error(errs, "phase", "must be 1 to %d printable characters", BONDS_LABEL_MAX);
    if (risk && !bonds_valid_id(risk, BONDS_LABEL_MAX))
        jv_error(errs, "risk_level", "must be 1 to %d printable characters", BONDS_LABEL_MAX);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    int limit;
    const char *cursor;
    if (!http_list_params(req, resp, &limit, &cursor))
        return;
    char *json = NULL;
    size_t len = 0;
    int rc = q ? bonds_search(ctx, q, phase, risk, limit, cursor, &json, &len)
               : bonds_list(ctx, phase, risk, limit, cursor, &json, &len);
    if (rc == ST_EINVALID) {
        errs = json_array();
        jv_error(errs, "cursor", "is not a cursor from this list");
        http_invalid(resp, errs);
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    answer_text(resp, 200, json, len);
}

/* The IETF draft headers for a capped answer (none for cap 0: there is no policy). */
static void rate_headers(struct http_resp *resp, const struct bonds_rate *r)
{
    if (r->cap == 0)
        return;
    http_header(resp, "RateLimit-Policy", "\"daily\";q=%lld;w=%d", r->cap, BONDS_WINDOW_S);
    http_header(resp, "RateLimit", "\"daily\";r=%lld;t=%lld", r->remaining, r->reset_in_s);
}

static json_t *rate_json(const struct bonds_rate *r)
{
    return json_pack("{s:b, s:I, s:I, s:I}", "allowed", r->allowed, "remaining",
                     (json_int_t)r->remaining, "cap", (json_int_t)r->cap, "count",
                     (json_int_t)r->count);
}

static void rate_check(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *user = user_param(req, resp);
    if (!user)
        return;
    struct bonds_rate r;
    int rc = bonds_rate_check(ctx, user, &r);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, rate_json(&r));
    rate_headers(resp, &r);
}

static void consumed(void *arg, int rc, const struct bonds_rate *r)
{
    struct http_deferred *d = arg;
    struct http_resp *resp = http_deferred_resp(d);
    if (rc == ST_ELIMIT) {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "the daily cap of %lld messages is reached; the window resets in %lld s", r->cap,
                 r->reset_in_s);
        http_problem_slug(resp, 429, "quota-exceeded", detail);
        json_t *body = resp->body;
        json_object_set_new(body, "allowed", json_false());
        json_object_set_new(body, "remaining", json_integer(0));
        json_object_set_new(body, "cap", json_integer(r->cap));
        json_object_set_new(body, "count", json_integer(r->count));
        http_header(resp, "Retry-After", "%lld", r->reset_in_s);
        rate_headers(resp, r);
    } else if (rc != ST_OK) {
        http_error(resp, rc, NULL);
    } else {
        http_json(resp, 200, rate_json(r));
        rate_headers(resp, r);
    }
    http_deferred_finish(d);
}

static void consume(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {NULL};
    const char *user = user_param(req, resp);
    if (!user || !http_body_object(req, resp, false))
        return;
    if (req->body && json_object_size(req->body) > 0) {
        json_t *errs = json_array();
        jv_unknown_fields(req->body, allowed, "", errs);
        http_invalid(resp, errs);
        return;
    }
    struct http_deferred *d = http_defer(req, resp);
    if (!d) {
        http_error(resp, ST_ENOMEM, NULL);
        return;
    }
    bonds_consume(ctx, user, consumed, d);
}

static void set_cap(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"daily_msg_cap", NULL};
    const char *user = user_param(req, resp);
    if (!user || !http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    long long cap = 0;
    jv_unknown_fields(req->body, allowed, "", errs);
    jv_int(req->body, "daily_msg_cap", "", true, 0, BONDS_CAP_MAX, &cap, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    char *json = NULL;
    size_t len = 0;
    const char *if_match = http_req_header(req, "If-Match");
    char etag[BONDS_ETAG_MAX];
    int rc = bonds_set_cap(ctx, user, cap, req->who->name, if_match, &json, &len, etag);
    if (rc == ST_ECONFLICT && if_match) {
        http_problem_slug(resp, 412, "precondition-failed",
                          "the bond entry changed since it was read (If-Match); read it again "
                          "and repeat the change if it still applies");
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    answer_text(resp, 200, json, len);
    http_header(resp, "ETag", "%s", etag);
}

static void add_note(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"note", NULL};
    const char *user = user_param(req, resp);
    if (!user || !http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    const char *note = NULL;
    jv_unknown_fields(req->body, allowed, "", errs);
    jv_string(req->body, "note", "", true, 1, BONDS_NOTE_MAX, &note, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    char *json = NULL;
    size_t len = 0;
    int rc = bonds_add_note(ctx, user, note, req->who->name, &json, &len);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    answer_text(resp, 200, json, len);
}

static void list_events(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *user = user_param(req, resp);
    int limit;
    const char *cursor;
    if (!user || !http_list_params(req, resp, &limit, &cursor))
        return;
    char *json = NULL;
    size_t len = 0;
    int rc = bonds_events(ctx, user, limit, cursor, &json, &len);
    if (rc == ST_EINVALID) {
        json_t *errs = json_array();
        jv_error(errs, "cursor", "is not a cursor from this list");
        http_invalid(resp, errs);
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no bond entry for this user" : NULL);
        return;
    }
    answer_text(resp, 200, json, len);
}

int bonds_http_register(struct router *r, struct bonds *b)
{
    int rc = 0;
    rc |= http_route(r, "GET", "/v1/bonds", AUTH_READ, list_bonds, b);
    rc |= http_route_nonblocking(r, "GET", "/v1/bonds/{user_id}", AUTH_READ, get_bond, b);
    rc |= http_route(r, "POST", "/v1/bonds/{user_id}/detections", AUTH_SERVICE, detections, b);
    rc |= http_route(r, "GET", "/v1/bonds/{user_id}/rate-limit", AUTH_READ, rate_check, b);
    rc |= http_route(r, "PUT", "/v1/bonds/{user_id}/rate-limit", AUTH_ADMIN, set_cap, b);
    rc |=
        http_route_nonblocking(r, "POST", "/v1/bonds/{user_id}/messages", AUTH_SERVICE, consume, b);
    rc |= http_route(r, "POST", "/v1/bonds/{user_id}/notes", AUTH_ADMIN, add_note, b);
    rc |= http_route(r, "GET", "/v1/bonds/{user_id}/events", AUTH_READ, list_events, b);
    return rc;
}
