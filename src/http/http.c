/* Request/response helpers shared by every capability's HTTP adapter. */
#include "steward/http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/cursor.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/problem.h"

const char *http_param(const struct http_req *req, const char *name)
{
    for (size_t i = 0; req->match && i < req->match->nparams; i++)
        if (strcmp(req->match->params[i].name, name) == 0)
            return req->match->params[i].value;
    return NULL;
}

const char *http_query(const struct http_req *req, const char *name)
{
    for (size_t i = 0; i < req->nquery; i++)
        if (strcmp(req->query[i].key, name) == 0)
            return req->query[i].value;
    return NULL;
}

bool http_cookie_value(const char *header, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    for (const char *p = header; p && *p;) {
        while (*p == ' ' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t vlen = len - nlen - 1;
            if (vlen + 1 > cap)
                return false;
            memcpy(out, p + nlen + 1, vlen);
            out[vlen] = '\0';
            return true;
        }
        p = end;
    }
    return false;
}

bool http_req_cookie(const struct http_req *req, const char *name, char *out, size_t cap)
{
    return http_cookie_value(http_req_header(req, "Cookie"), name, out, cap);
}

void http_json(struct http_resp *resp, int status, json_t *body)
{
    json_decref(resp->body);
    resp->status = status;
    resp->body = body;
}

void http_problem_slug(struct http_resp *resp, int status, const char *slug, const char *detail)
{
    http_json(resp, status, problem_new(status, slug, detail));
}

void http_problem(struct http_resp *resp, int status, const char *detail)
{
    http_problem_slug(resp, status, NULL, detail);
}

void http_invalid(struct http_resp *resp, json_t *errs)
{
    size_t n = json_array_size(errs);
    char detail[128];
    snprintf(detail, sizeof(detail), "the request has %zu invalid field%s", n, n == 1 ? "" : "s");
    json_t *p = problem_new(422, NULL, detail);
    json_object_set_new(p, "errors", errs);
    http_json(resp, 422, p);
}

void http_header(struct http_resp *resp, const char *name, const char *fmt, ...)
{
    if (resp->nheaders >= HTTP_MAX_HEADERS)
        return;
    int i = resp->nheaders++;
    snprintf(resp->headers[i].name, sizeof(resp->headers[i].name), "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(resp->headers[i].value, sizeof(resp->headers[i].value), fmt, ap);
    va_end(ap);
}

void http_error(struct http_resp *resp, int st_err, const char *detail)
{
    switch (st_err) {
    case ST_ENOTFOUND:
        http_problem(resp, 404, detail ? detail : "no such resource");
        break;
    case ST_ECONFLICT:
        http_problem(resp, 409, detail ? detail : "the request conflicts with the current state");
        break;
    case ST_EINVALID:
        http_problem(resp, 422, detail ? detail : "a value is out of range");
        break;
    case ST_EFORBIDDEN:
        http_problem(resp, 403, detail ? detail : "not allowed");
        break;
    case ST_EUNAVAIL:
        http_problem(resp, 503, "the database is unavailable; retry shortly");
        http_header(resp, "Retry-After", "1");
        break;
    default:
        http_problem(resp, 500, "internal error; the request id is in the logs");
        break;
    }
}

bool http_body_object(const struct http_req *req, struct http_resp *resp, bool required)
{
    if (!req->body) {
        if (!required)
            return true;
        json_t *errs = json_array();
        jv_error(errs, "body", "a JSON object body is required");
        http_invalid(resp, errs);
        return false;
    }
    if (!json_is_object(req->body)) {
        json_t *errs = json_array();
        jv_error(errs, "body", "must be a JSON object");
        http_invalid(resp, errs);
        return false;
    }
    return true;
}

void http_list_params_into(const struct http_req *req, json_t *errs, int *limit,
                           const char **cursor)
{
    *limit = 50;
    *cursor = http_query(req, "cursor");
    const char *l = http_query(req, "limit");
    if (l) {
        char *end;
        long v = strtol(l, &end, 10);
        if (!*l || *end || v < 1 || v > 500)
            jv_error(errs, "limit", "must be an integer from 1 to 500");
        else
            *limit = (int)v;
    }
    if (*cursor && !**cursor)
        *cursor = NULL;
}

void http_unknown_query(const struct http_req *req, const char *const *allowed, json_t *errs)
{
    for (size_t i = 0; i < req->nquery; i++) {
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, req->query[i].key) == 0;
        if (!known)
            jv_error(errs, req->query[i].key, "unknown query parameter");
    }
}

bool http_no_query(const struct http_req *req, struct http_resp *resp)
{
    if (req->nquery == 0)
        return true;
    static const char *const none[] = {NULL};
    json_t *errs = json_array();
    http_unknown_query(req, none, errs);
    http_invalid(resp, errs);
    return false;
}

int64_t http_id_cursor(const char *cursor, json_t *errs)
{
    int64_t before = 0, zero = 0;
    if (!cursor)
        return 0;
    if (cursor_decode(cursor, &before, &zero) != 0 || before <= 0 || zero != 0) {
        jv_error(errs, "cursor", "is not a cursor this service issued");
        return 0;
    }
    return before;
}

json_t *http_next_cursor(long long next)
{
    if (next <= 0)
        return json_null();
    char buf[CURSOR_LEN];
    cursor_encode(buf, next, 0);
    return json_string(buf);
}

bool http_list_params(const struct http_req *req, struct http_resp *resp, int *limit,
                      const char **cursor)
{
    json_t *errs = json_array();
    http_list_params_into(req, errs, limit, cursor);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return false;
    }
    json_decref(errs);
    return true;
}

int http_route(struct router *rt, const char *method, const char *pattern, int scope,
               http_handler_fn fn, void *ctx)
{
    return router_add(rt, method, pattern, scope, (void *)fn, ctx) < 0 ? -1 : 0;
}

int http_route_sized(struct router *rt, const char *method, const char *pattern, int scope,
                     http_handler_fn fn, void *ctx, size_t body_limit)
{
    if (http_route(rt, method, pattern, scope, fn, ctx) != 0)
        return -1;
    rt->routes[rt->count - 1].body_limit = body_limit;
    return 0;
}

int http_route_nonblocking(struct router *rt, const char *method, const char *pattern, int scope,
                           http_handler_fn fn, void *ctx)
{
    if (http_route(rt, method, pattern, scope, fn, ctx) != 0)
        return -1;
    rt->routes[rt->count - 1].nonblocking = true;
    return 0;
}
