/* Fuzzes the request body validators of one capability (FUZZ_CAP) through its real
 * HTTP handlers, the way src/http/server.c calls them: the first input byte picks one
 * of the capability's routes, the bytes up to the first newline are the raw path
 * parameter (percent-encoded as on the wire), the next line the query string, the rest
 * the body. Bodies are parsed with jv_parse as the server does; the handler runs with
 * an admin principal against a database that does not exist. A handler must answer
 * (status set), never 500, and produce a serialisable body: a 4xx problem for bad input,
 * 503 when the input was valid and the database was needed. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "steward/http.h"
#include "steward/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_CAP
#error "FUZZ_CAP names the capability whose routes this target fuzzes"
#endif

/* Route patterns (prefixes) that belong to each capability. */
static bool belongs(const char *pattern)
{
    static const char *const lessons[] = {"/v1/lessons", NULL};
    static const char *const planner[] = {"/v1/posts/", "/v1/actions/", "/v1/planner/", NULL};
    static const char *const bonds[] = {"/v1/bonds", "/v1/users/{user_id}", NULL};
    static const char *const scouts[] = {"/v1/scouts", "/v1/users/{user_id}/proposals", NULL};
    static const char *const devices[] = {"/v1/devices", "/v1/users/{user_id}/devices", NULL};
    const char *const *list = strcmp(FUZZ_CAP, "lessons") == 0   ? lessons
                              : strcmp(FUZZ_CAP, "planner") == 0 ? planner
                              : strcmp(FUZZ_CAP, "bonds") == 0   ? bonds
                              : strcmp(FUZZ_CAP, "scouts") == 0  ? scouts
                                                                 : devices;
    for (; *list; list++) {
        size_t n = strlen(*list);
        if (strncmp(pattern, *list, n) != 0)
            continue;
        /* /v1/users/{user_id} alone is erasure (src/users, fuzzed with bonds, whose
         * ids it takes); the longer ones are others' */
        if (strcmp(*list, "/v1/users/{user_id}") == 0 && pattern[n] != '\0')
            continue;
        return true;
    }
    return false;
}

static const struct route *pick(const struct router *r, uint8_t b)
{
    const struct route *mine[ROUTER_MAX_ROUTES];
    size_t n = 0;
    for (size_t i = 0; i < r->count; i++)
        if (belongs(r->routes[i].pattern))
            mine[n++] = &r->routes[i];
    if (n == 0)
        fuzz_fail("setup", "no routes for " FUZZ_CAP);
    return mine[b % n];
}

/* Pattern with every {param} replaced by the raw parameter text. */
static char *build_path(const char *pattern, const char *param)
{
    size_t plen = strlen(param), cap = strlen(pattern) + 4 * plen + 1;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    for (const char *p = pattern; *p;) {
        if (*p == '{') {
            memcpy(o, param, plen);
            o += plen;
            p = strchr(p, '}') + 1;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* key=value pairs split at '&' and '=' (in place), at most HTTP_MAX_QUERY */
static void parse_query(char *q, struct http_req *req)
{
    char *save = NULL;
    for (char *kv = strtok_r(q, "&", &save); kv && req->nquery < HTTP_MAX_QUERY;
         kv = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(kv, '=');
        if (eq)
            *eq++ = '\0';
        req->query[req->nquery].key = kv;
        req->query[req->nquery].value = eq ? eq : "";
        req->nquery++;
    }
}

static char *line(const uint8_t **data, size_t *size)
{
    const uint8_t *nl = memchr(*data, '\n', *size);
    size_t n = nl ? (size_t)(nl - *data) : *size;
    char *s = malloc(n + 1);
    if (!s)
        return NULL;
    memcpy(s, *data, n);
    s[n] = '\0'; /* a NUL inside ends the string, as in a C request line */
    *data += nl ? n + 1 : n;
    *size -= nl ? n + 1 : n;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_world *w = fuzz_world_get(false);
    if (size < 1 || size > (1u << 20))
        return 0;
    const struct route *rt = pick(&w->router, data[0]);
    data++;
    size--;
    char *param = line(&data, &size);
    char *query = line(&data, &size);
    char *path = param ? build_path(rt->pattern, param) : NULL;
    json_t *body = NULL;
    struct http_resp resp = {0};
    if (!param || !query || !path)
        goto out;

    struct route_match m;
    router_match(&w->router, rt->method, path, &m);
    if (!m.route)
        goto out; /* 400/404/405 before any handler: the router target covers it */
    bool has_body = strcmp(rt->method, "POST") == 0 || strcmp(rt->method, "PUT") == 0 ||
                    strcmp(rt->method, "PATCH") == 0;
    if (has_body && size > 0) {
        char err[200];
        body = jv_parse((const char *)data, size, err, sizeof(err));
        if (!body)
            goto out; /* 400 malformed JSON */
    }
    struct auth_principal who = {.scope = AUTH_ADMIN, .key_id = 1};
    snprintf(who.name, sizeof(who.name), "fuzz");
    struct http_req req = {0};
    req.method = m.route->method;
    req.path = path;
    req.route = m.route->pattern;
    req.match = &m;
    req.body = body;
    req.request_id = "fuzz";
    req.who = &who;
    parse_query(query, &req);
    ((http_handler_fn)m.route->handler)(m.route->ctx, &req, &resp);

    if (resp.status == 0)
        fuzz_fail(m.route->pattern, "the handler produced no response");
    if (resp.status >= 500 && resp.status != 503)
        fuzz_fail(m.route->pattern, "answered 500 (a bug) to fuzzed input");
    if (resp.status < 100 || resp.status > 599)
        fuzz_fail(m.route->pattern, "status out of range");
    if (!resp.text) {
        if (resp.status >= 400) {
            json_t *st = json_object_get(resp.body, "status");
            if (!json_is_integer(st) || json_integer_value(st) != resp.status)
                fuzz_fail(m.route->pattern, "problem body without the right status");
        }
        char *text = resp.body ? json_dumps(resp.body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        if (resp.body && !text)
            fuzz_fail(m.route->pattern, "response body does not serialise");
        free(text);
    }
out:
    json_decref(resp.body);
    free(resp.text);
    json_decref(body);
    free(path);
    free(param);
    free(query);
    return 0;
}
