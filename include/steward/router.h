/* Route table: templates such as /v1/bonds/{user_id} matched against request paths.
 * Pure logic, no transport. */
#ifndef STEWARD_ROUTER_H
#define STEWARD_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#define ROUTER_MAX_PARAMS 4
#define ROUTER_MAX_ROUTES 96
#define ROUTER_PARAM_MAX 512 /* bytes of a decoded path parameter */

struct route {
    const char *method;  /* "GET", ... */
    const char *pattern; /* "/v1/bonds/{user_id}" */
    int scope;           /* enum auth_scope required; 0 = unauthenticated */
    void *handler;       /* opaque to the router */
    void *ctx;
    int index;        /* position in the table, for metrics */
    bool nonblocking; /* the handler never waits (it defers database work) */
    size_t body_limit; /* bytes of request body accepted; 0: the server's default */
};

struct router {
    size_t count;
    struct route routes[ROUTER_MAX_ROUTES];
};

struct route_param {
    char name[32];
    char value[ROUTER_PARAM_MAX + 1];
};

struct route_match {
    const struct route *route; /* NULL: no route for this method and path */
    size_t nparams;
    struct route_param params[ROUTER_MAX_PARAMS];
    int path_known; /* 1 when the path matched some route with another method */
    char allow[96]; /* "GET, PUT" when path_known */
    int bad_param;  /* 1 when a parameter was overlong or badly encoded */
};

void router_init(struct router *r);
/* Adds a route; returns its index or -1 when the table is full or the pattern bad. */
int router_add(struct router *r, const char *method, const char *pattern, int scope, void *handler,
               void *ctx);
/* Matches method and path (without query string). Literal segments win over
 * parameters, so /v1/lessons/snapshot is not read as /v1/lessons/{id}. */
void router_match(const struct router *r, const char *method, const char *path,
                  struct route_match *m);
/* Percent-decodes src[0..len) into dst (cap bytes); rejects bad escapes, NUL bytes and
 * output that does not fit. Returns the decoded length or -1. */
long router_decode(const char *src, size_t len, char *dst, size_t cap);

#endif
