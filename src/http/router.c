#include "steward/router.h"

#include <stdio.h>
#include <string.h>

void router_init(struct router *r)
{
    memset(r, 0, sizeof(*r));
}

static int pattern_ok(const char *p)
{
    if (p[0] != '/')
        return 0;
    int params = 0;
    for (const char *c = p; *c; c++)
        if (*c == '{')
            params++;
    return params <= ROUTER_MAX_PARAMS;
}

int router_add(struct router *r, const char *method, const char *pattern, int scope,
               void *handler, void *ctx)
{
    if (r->count >= ROUTER_MAX_ROUTES || !pattern_ok(pattern))
        return -1;
    struct route *rt = &r->routes[r->count];
    rt->method = method;
    rt->pattern = pattern;
    rt->scope = scope;
    rt->handler = handler;
    rt->ctx = ctx;
    rt->index = (int)r->count;
    rt->nonblocking = false;
    rt->body_limit = 0;
    return (int)r->count++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long router_decode(const char *src, size_t len, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap)
            return -1;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return (long)o;
}

/* Scores how well pattern matches path: -1 no match, else number of literal
 * segments (higher wins). Fills params when m is not NULL. One pass over both strings
 * that stops at the first differing character: every request tries every route, so
 * this runs about 40 times per request. */
static int match_one(const char *pattern, const char *path, struct route_match *m, int *bad)
{
    const char *p = pattern, *s = path;
    int literals = 0;
    size_t np = 0;
    while (*p && *s) {
        if (*p != '/' || *s != '/')
            return -1;
        p++;
        s++;
        if (*p == '{') {
            const char *pe = p;
            while (*pe && *pe != '/')
                pe++;
            size_t plen = (size_t)(pe - p);
            if (plen > 2 && pe[-1] == '}') {
                const char *se = s;
                while (*se && *se != '/')
                    se++;
                size_t slen = (size_t)(se - s);
                if (slen == 0)
                    return -1;
                if (m) {
                    struct route_param *rp = &m->params[np];
                    size_t nlen =
                        plen - 2 < sizeof(rp->name) - 1 ? plen - 2 : sizeof(rp->name) - 1;
                    memcpy(rp->name, p + 1, nlen);
                    rp->name[nlen] = '\0';
                    if (router_decode(s, slen, rp->value, sizeof(rp->value)) < 0) {
                        *bad = 1;
                        return -1;
                    }
                }
                np++;
                p = pe;
                s = se;
                continue;
            }
        }
        /* a literal segment: the same characters up to the same end */
        while (*p && *p != '/') {
            if (*s != *p)
                return -1;
            p++;
            s++;
        }
        if (*s && *s != '/')
            return -1;
        literals++;
    }
    if (*p || *s)
        return -1;
    if (m)
        m->nparams = np;
    return literals;
}

void router_match(const struct router *r, const char *method, const char *path,
                  struct route_match *m)
{
    m->route = NULL;
    m->nparams = 0;
    m->path_known = 0;
    m->allow[0] = '\0';
    m->bad_param = 0;
    int best = -1, best_any = -1;
    const struct route *winner = NULL;
    int dummy = 0;
    /* First pass: the best score over all methods, then the best for this method. */
    for (size_t i = 0; i < r->count; i++) {
        int sc = match_one(r->routes[i].pattern, path, NULL, &dummy);
        if (sc < 0)
            continue;
        if (sc > best_any)
            best_any = sc;
        if (strcmp(r->routes[i].method, method) == 0 && sc > best) {
            best = sc;
            winner = &r->routes[i];
        }
    }
    if (best_any < 0)
        return;
    if (winner && best == best_any) {
        int bad = 0;
        if (match_one(winner->pattern, path, m, &bad) < 0) {
            m->bad_param = bad;
            return;
        }
        m->route = winner;
        return;
    }
    /* The path names a resource, but not with this method: list what it allows. */
    m->path_known = 1;
    size_t len = 0;
    for (size_t i = 0; i < r->count; i++) {
        if (match_one(r->routes[i].pattern, path, NULL, &dummy) != best_any)
            continue;
        const char *meth = r->routes[i].method;
        if (strstr(m->allow, meth))
            continue;
        int n = snprintf(m->allow + len, sizeof(m->allow) - len, "%s%s", len ? ", " : "", meth);
        if (n < 0 || (size_t)n >= sizeof(m->allow) - len)
            break;
        len += (size_t)n;
    }
}
