/* The REST server: libmicrohttpd with a thread pool, routing through struct router. */
#ifndef STEWARD_HTTP_SERVER_H
#define STEWARD_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "steward/auth.h"
#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/router.h"

#define HTTP_BODY_LIMIT (1024 * 1024)

struct http_server_opts {
    const char *bind;
    int port; /* 0 picks a free port */
    int threads;
    bool access_log;
    const struct router *router;
    struct auth *auth;
    struct metrics *metrics;
    const struct logger *lg;
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
