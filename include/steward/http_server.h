/* The REST server: one event loop per HTTP thread, each running its own libmicrohttpd
 * daemon (external polling) on one shared listening socket, routing through struct
 * router. A guest (the database pipe) may share each loop: work a request starts there
 * completes there, without changing threads. */
#ifndef STEWARD_HTTP_SERVER_H
#define STEWARD_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "steward/principal.h"
#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/router.h"

#define HTTP_BODY_LIMIT (1024 * 1024)

/* Work living on each HTTP loop thread beside libmicrohttpd. Every function runs on that
 * thread. attach returns the thread's state (NULL: this thread takes no part). flush
 * runs after each round of HTTP work: it fills up to HTTP_GUEST_FDS descriptors to wait
 * on (with their events), returns how many, and sets *timeout_ms (-1: none); service
 * runs after every wait with those descriptors and their revents. busy says whether
 * work is still pending (a stopping loop keeps running until it is not); detach ends. */
#define HTTP_GUEST_FDS 4
struct pollfd;
struct http_loop_guest {
    void *ctx;
    void *(*attach)(void *ctx);
    int (*flush)(void *st, struct pollfd *fds, int *timeout_ms);
    void (*service)(void *st, const struct pollfd *fds, int n);
    bool (*busy)(void *st);
    void (*detach)(void *st);
};

struct http_server_opts {
    const char *bind;
    int port;    /* 0 picks a free port */
    int loops;   /* event loops: each accepts, parses and answers (and runs nonblocking
                  * handlers) for its share of the connections */
    int threads; /* handler threads: run every handler that may wait on the database */
    int park_ms; /* a loop handler's deferred request waits this long unsuspended, then
                  * is suspended (0: at once) */
    bool access_log;
    int max_connections;      /* open connections in all (<= 0: 16384) */
    int max_per_address;      /* open connections from one client address (0: no cap) */
    int header_timeout_s;     /* a request head must arrive within this (<= 0: 10) */
    const struct router *router;
    const struct auth_verifier *auth; /* must outlive the server */
    struct metrics *metrics;
    const struct logger *lg;
    const struct http_loop_guest *guest; /* optional; must outlive the server */
};

struct http_server;

/* Starts serving. Returns NULL and writes err when the socket cannot be bound. The
 * router, auth, metrics and logger must outlive the server. */
struct http_server *http_server_start(const struct http_server_opts *o, char *err, size_t errlen);
/* The port actually bound. */
int http_server_port(const struct http_server *s);
/* Stops accepting, waits up to timeout_ms for in-flight requests, then frees. */
void http_server_stop(struct http_server *s, int timeout_ms);

#endif
