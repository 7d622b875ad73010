/* Lessons over REST (docs/api.md, "Lessons journal"): adapts requests to the calls of lessons.c. */
#include <stdlib.h>
#include <string.h>

#include "steward/principal.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"
#include "steward/lessons.h"

#define DISABLED_DETAIL "the lessons journal is switched off (STEWARD_LESSONS_ENABLED=false)"

/* Parses the {id} path parameter: a positive decimal integer of at most 18 digits. */
static bool path_id(const struct http_req *req, long long *id)
{
    const char *s = http_param(req, "id");
    if (!s || !*s || strlen(s) > 18)
        return false;
    long long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    *id = v;
    return v > 0;
}

static void post_lesson(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct lessons *l = ctx;
    if (!http_body_object(req, resp, true))
        return;
    struct lesson_input in;
    json_t *errs = json_array();
    if (!lessons_parse_new(req->body, &in, errs)) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    struct lesson_outcome o;
    int rc = lessons_record(l, &in, &o);
    if (rc == ST_EDISABLED)
        http_json(resp, 200, json_pack("{s:b, s:s}", "recorded", 0, "reason", "disabled"));
    else if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else if (o.recorded)
        http_json(resp, 201, json_pack("{s:b, s:I}", "recorded", 1, "id", (json_int_t)o.id));
    else
        http_json(resp, 200, json_pack("{s:b, s:s, s:I}", "recorded", 0, "reason",
                                       "deduplicated", "duplicate_of",
                                       (json_int_t)o.duplicate_of));
}

static void list_lessons(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"lesson_type", "status", "repo", "work_item_id",
                                          "limit",       "cursor", NULL};
    struct lessons *l = ctx;
    int limit;
    const char *cursor;
    json_t *errs = json_array();
    http_list_params_into(req, errs, &limit, &cursor);
    http_unknown_query(req, allowed, errs);
    struct lesson_filter f = {http_query(req, "lesson_type"), http_query(req, "status"),
                              http_query(req, "repo"), http_query(req, "work_item_id")};
    lessons_check_filter(&f, errs);
    int64_t before = http_id_cursor(cursor, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *items = NULL;
    long long next = 0;
    int rc = lessons_list(l, &f, limit, before, &items, &next);
    if (rc == ST_EDISABLED) {
        http_json(resp, 200, json_pack("{s:b, s:[], s:n}", "enabled", 0, "items",
                                       "next_cursor"));
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    json_t *nc = http_next_cursor(next);
    http_json(resp, 200, json_pack("{s:b, s:o, s:o}", "enabled", 1, "items", items,
                                   "next_cursor", nc));
}

static void get_lesson(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct lessons *l = ctx;
    long long id;
    if (!path_id(req, &id)) {
        http_problem(resp, 404, "no such lesson");
        return;
    }
    json_t *lesson = NULL;
    int rc = lessons_get(l, id, &lesson);
    if (rc == ST_EDISABLED)
        http_problem(resp, 404, DISABLED_DETAIL);
    else if (rc == ST_ENOTFOUND)
        http_problem(resp, 404, "no such lesson");
    else if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 200, lesson);
}

static void patch_lesson(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    struct lessons *l = ctx;
    long long id;
    if (!path_id(req, &id)) {
        http_problem(resp, 404, "no such lesson");
        return;
    }
    if (!http_body_object(req, resp, true))
        return;
    json_t *errs = json_array(), *changes = NULL;
    if (!lessons_parse_patch(req->body, &changes, errs)) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *lesson = NULL;
    int rc = lessons_update(l, id, changes, req->who ? req->who->name : NULL, &lesson);
    json_decref(changes);
    if (rc == ST_EDISABLED)
        http_json(resp, 200, json_pack("{s:b, s:s}", "updated", 0, "reason", "disabled"));
    else if (rc == ST_ENOTFOUND)
        http_problem(resp, 404, "no such lesson");
    else if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 200, json_pack("{s:b, s:o}", "updated", 1, "lesson", lesson));
}

static void snapshot(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    (void)req;
    json_t *out = NULL;
    int rc = lessons_snapshot(ctx, &out);
    if (rc != ST_OK)
        http_error(resp, rc, NULL);
    else
        http_json(resp, 200, out);
}

int lessons_http_register(struct router *r, struct lessons *l)
{
    int rc = 0;
    rc |= http_route(r, "POST", "/v1/lessons", AUTH_SERVICE, post_lesson, l);
    rc |= http_route(r, "GET", "/v1/lessons", AUTH_READ, list_lessons, l);
    rc |= http_route(r, "GET", "/v1/lessons/snapshot", AUTH_READ, snapshot, l);
    rc |= http_route(r, "GET", "/v1/lessons/{id}", AUTH_READ, get_lesson, l);
    rc |= http_route(r, "PATCH", "/v1/lessons/{id}", AUTH_ADMIN, patch_lesson, l);
    return rc;
}
