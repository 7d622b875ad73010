/* HTTP adapter of the healer: POST /v1/heal, GET /v1/reports, GET /v1/status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/cursor.h"
#include "steward/err.h"
#include "steward/healer.h"
#include "steward/http.h"
#include "steward/json.h"

static void heal(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct healer *h = ctx;
    if (!http_body_object(req, resp, false))
        return;
    json_t *errs = json_array();
    static const char *const none[] = {NULL};
    if (req->body)
        jv_unknown_fields(req->body, none, "", errs);
    http_unknown_query(req, none, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *report = NULL;
    enum healer_skip skip;
    char holder[160];
    int rc = healer_sweep(h, true, &report, &skip, holder, sizeof(holder));
    if (rc == ST_OK) {
        /* the sweep ran and is reported whatever the trail says; a failed audit row is
         * logged by the pool */
        healer_audit_sweep(h, req->who ? req->who->name : NULL, report);
        http_json(resp, 200, report);
        return;
    }
    if (rc == ST_ECONFLICT) {
        char detail[256];
        snprintf(detail, sizeof(detail), "a sweep is already running on instance %s",
                 holder[0] ? holder : "(unknown)");
        http_problem(resp, 409, detail);
        http_header(resp, "Retry-After", "5");
        return;
    }
    http_error(resp, rc, NULL);
}

static void reports(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct healer *h = ctx;
    json_t *errs = json_array();
    static const char *const allowed[] = {"event_type", "limit", "cursor", NULL};
    http_unknown_query(req, allowed, errs);
    int limit;
    const char *cursor;
    http_list_params_into(req, errs, &limit, &cursor);
    const char *type = http_query(req, "event_type");
    if (type && !*type)
        type = NULL;
    if (type && !healer_report_type_valid(type))
        jv_error(errs, "event_type",
                 "must be self_healing_report or performance_optimization_report");
    int64_t before = 0, unused = 0;
    if (cursor && (cursor_decode(cursor, &before, &unused) != 0 || before <= 0))
        jv_error(errs, "cursor", "is not a cursor of this list");
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *items = NULL;
    int64_t next = 0;
    int rc = healer_reports_list(h, type, before, limit, &items, &next);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200,
              json_pack("{s:o, s:o}", "items", items, "next_cursor", http_next_cursor(next)));
}

static void status(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct healer *h = ctx;
    if (!http_no_query(req, resp))
        return;
    json_t *st = healer_status(h);
    if (!st) {
        http_problem(resp, 500, "out of memory");
        return;
    }
    http_json(resp, 200, st);
}

static void instances(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct healer *h = ctx;
    if (!http_no_query(req, resp))
        return;
    json_t *items = NULL;
    int rc = healer_instances_list(h, false, &items);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 200, json_pack("{s:o}", "items", items));
}

int healer_http_register(struct router *r, struct healer *h)
{
    int rc = 0;
    rc |= http_route(r, "POST", "/v1/heal", AUTH_ADMIN, heal, h);
    rc |= http_route(r, "GET", "/v1/reports", AUTH_READ, reports, h);
    rc |= http_route(r, "GET", "/v1/status", AUTH_READ, status, h);
    rc |= http_route(r, "GET", "/v1/instances", AUTH_READ, instances, h);
    return rc;
}
