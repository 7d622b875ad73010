/* What a capability's HTTP adapter sees: a parsed request and a response to fill.
 * The transport (libmicrohttpd) stays inside src/http. */
#ifndef STEWARD_HTTP_H
#define STEWARD_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/principal.h"
#include "steward/log.h"
#include "steward/router.h"

#define HTTP_MAX_QUERY 16
#define HTTP_MAX_HEADERS 8

struct http_req {
    const char *method;
    const char *path;
    const char *route; /* the matched template */
    const struct route_match *match;
    size_t nquery;
    struct {
        const char *key;
        const char *value;
    } query[HTTP_MAX_QUERY];
    json_t *body; /* parsed JSON body, NULL when the request had none (borrowed) */
    const char *request_id;
    const struct auth_principal *who; /* the caller; scope AUTH_NONE on open routes */
    void *transport; /* the server's request state (http_defer); NULL in direct calls */
};

struct http_resp {
    int status;
    json_t *body; /* owned; serialised as JSON (problem+json when status >= 400) */
    char *text;   /* owned; used instead of body when set */
    size_t text_len;
    const char *content_type; /* static string; default application/json */
    int nheaders;
    struct {
        char name[32];
        char value[160];
    } headers[HTTP_MAX_HEADERS];
};

typedef void (*http_handler_fn)(void *ctx, const struct http_req *req, struct http_resp *resp);

/* Answering later, without holding the thread that runs the handler.
 *
 * A handler calls http_defer, hands the token to asynchronous work and returns at once
 * without touching resp. The work fills http_deferred_resp(d) and calls
 * http_deferred_finish(d) exactly once, from any thread; the response is sent then.
 * req and everything it points to are valid only until the handler returns: copy what
 * the work needs. Outside the server (req->transport NULL, e.g. tests calling a
 * handler directly) the token writes into resp itself, so the work must finish before
 * the handler returns. Returns NULL when out of memory: answer at once then. */
struct http_deferred;
struct http_deferred *http_defer(const struct http_req *req, struct http_resp *resp);
struct http_resp *http_deferred_resp(struct http_deferred *d);
void http_deferred_finish(struct http_deferred *d);

/* A path parameter by name ("user_id"), or NULL. */
const char *http_param(const struct http_req *req, const char *name);
/* A query parameter by name, or NULL. */
const char *http_query(const struct http_req *req, const char *name);
/* A request header by name (case-insensitive), or NULL; valid while req is. NULL too
 * outside the server (direct calls). */
const char *http_req_header(const struct http_req *req, const char *name);
/* The value of the cookie named name in the Cookie header, copied into out[cap];
 * false when absent or longer. */
bool http_req_cookie(const struct http_req *req, const char *name, char *out, size_t cap);
/* The same on a Cookie header's text (NULL: absent). */
bool http_cookie_value(const char *header, const char *name, char *out, size_t cap);

/* Sets status and a JSON body (stolen). */
void http_json(struct http_resp *resp, int status, json_t *body);
/* Sets a problem+json response with the default slug for status. */
void http_problem(struct http_resp *resp, int status, const char *detail);
/* Same with an explicit type slug ("quota-exceeded"). */
void http_problem_slug(struct http_resp *resp, int status, const char *slug, const char *detail);
/* 422 listing errs (stolen; an array of {"field","message"}). */
void http_invalid(struct http_resp *resp, json_t *errs);
/* Maps a ST_* failure to its response: 404, 409, 422, 503 with Retry-After, 500. */
void http_error(struct http_resp *resp, int st_err, const char *detail);
/* Adds a response header (name and value are copied, truncated if overlong). */
void http_header(struct http_resp *resp, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checks the request body is a JSON object: answers 422 and returns false otherwise
 * (also when it is required and missing). */
bool http_body_object(const struct http_req *req, struct http_resp *resp, bool required);

/* Reads limit (1..500, default 50) and cursor from the query string; on a bad value
 * answers 422 and returns false. *cursor is NULL when absent. */
bool http_list_params(const struct http_req *req, struct http_resp *resp, int *limit,
                      const char **cursor);
/* The same for a handler that checks more of the query string and answers every problem
 * at once: appends what is wrong to errs (an array of {"field","message"}) instead. */
void http_list_params_into(const struct http_req *req, json_t *errs, int *limit,
                           const char **cursor);
/* Appends "unknown query parameter" to errs for every query key not in allowed
 * (NULL-terminated). */
void http_unknown_query(const struct http_req *req, const char *const *allowed, json_t *errs);
/* The id a list cursor of this service names (an id cursor, see cursor.h); 0 when cursor
 * is NULL, and 0 with an error appended to errs when it is not one this service issued. */
int64_t http_id_cursor(const char *cursor, json_t *errs);
/* For a route that takes no query parameter: false after answering 422 naming every one
 * the request has, true when it has none. */
bool http_no_query(const struct http_req *req, struct http_resp *resp);
/* The next_cursor of a list answer: an id cursor naming next, or JSON null when next is 0
 * (the last page). */
json_t *http_next_cursor(long long next);

/* Route registration for capabilities: scope is an enum auth_scope. */
/* Registers a route for a capability; scope is an enum auth_scope (AUTH_NONE = open).
 * Returns 0, or -1 when the table is full (a programming error: checked at start-up). */
int http_route(struct router *rt, const char *method, const char *pattern, int scope,
               http_handler_fn fn, void *ctx);
/* The same for a route whose requests may carry more than HTTP_BODY_LIMIT bytes of body
 * (a batch): body_limit bytes at most (a whole number of MiB), for this route only. */
int http_route_sized(struct router *rt, const char *method, const char *pattern, int scope,
                     http_handler_fn fn, void *ctx, size_t body_limit);
/* The same for a handler that never waits: it only computes, or hands its database work
 * to the pipe with http_defer. Such a handler runs on the HTTP event loop itself; every
 * other handler runs on one of the HTTP handler threads. */
int http_route_nonblocking(struct router *rt, const char *method, const char *pattern, int scope,
                           http_handler_fn fn, void *ctx);

#endif
