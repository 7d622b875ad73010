/* The device WebSocket server (libwebsockets on a libuv loop, one service thread).
 *
 * Frames are JSON objects dispatched by "type" to handlers that capabilities register.
 * Handlers run on the service thread and must not block: database work goes to a
 * workq, and results come back through ws_send / ws_close, which any thread may call
 * (they queue per session and wake the loop with lws_cancel_service). Sessions are
 * named by a 64-bit id that is never reused while the process lives.
 *
 * A session is an id plus an opaque tag: whoever accepts it (ws_session_accept, after
 * its device_hello checked out) hands in a tag, and gets it back in the closed callback,
 * where it may free it. This layer never looks inside a tag and knows no device or user:
 * the acceptor keeps its own registry of its sessions. */
#ifndef STEWARD_WS_H
#define STEWARD_WS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/log.h"
#include "steward/metrics.h"

#define WS_MAX_FRAME (64 * 1024)
#define WS_PATH "/v1/devices/ws"

/* Close codes this server sends (RFC 6455 7.4.1; 4000-4999 are ours). */
enum {
    WS_CLOSE_GOING_AWAY = 1001,      /* the peer is going away (not sent by this server) */
    WS_CLOSE_INVALID_DATA = 1007,    /* a text frame that is not UTF-8 */
    WS_CLOSE_POLICY = 1008,          /* the peer does not read: its queue overflowed */
    WS_CLOSE_TOO_BIG = 1009,         /* a frame over WS_MAX_FRAME */
    WS_CLOSE_SERVICE_RESTART = 1012, /* the server is stopping: reconnect, elsewhere */
    WS_CLOSE_TRY_AGAIN = 1013,       /* the database is away or the server is busy */
    WS_CLOSE_UNAUTHORIZED = 4401,    /* no device_hello yet, or a wrong one */
    WS_CLOSE_REVOKED = 4403,         /* the device was deleted or its user erased */
    WS_CLOSE_HELLO_TIMEOUT = 4408,   /* no device_hello within hello_timeout_s */
};

struct ws_server;

struct ws_server_opts {
    const char *bind;
    int port; /* 0 picks a free port */
    int hello_timeout_s;
    int heartbeat_s;
    int max_queue_bytes;
    int max_connections;
    int max_frames_per_s; /* per session; more closes it WS_CLOSE_POLICY (0: no limit) */
    int max_handshakes;   /* accepted, not yet upgraded; at it accepts pause (0: no cap) */
    int listen_backlog;   /* the kernel's accept queue (0: lws' own, SOMAXCONN) */
    int accept_rate;      /* connections accepted per second at most (0: no limit) */
    const struct logger *lg;
    struct metrics *metrics; /* frame counters; the MG_WS_* gauges (may be NULL) */
};

/* Called on the service thread for a frame of the registered type. frame is borrowed.
 * authed tells whether the session completed device_hello. */
typedef void (*ws_frame_fn)(void *ctx, struct ws_server *ws, uint64_t sid, bool authed,
                            json_t *frame);
/* Called on the service thread when an accepted session closes, with the tag it was
 * accepted with; the session id is already unknown to every ws_* call (ws_send gets
 * -1), so the callee may free the tag. Not called for sessions never accepted. */
typedef void (*ws_closed_fn)(void *ctx, struct ws_server *ws, uint64_t sid, void *tag);

/* Creates the server and binds its port; no thread runs yet. NULL + err on failure. */
struct ws_server *ws_server_new(const struct ws_server_opts *o, char *err, size_t errlen);
/* Registers a handler (before ws_server_start). before_hello: also called for
 * unauthenticated sessions; other types sent before hello get error + close
 * WS_CLOSE_UNAUTHORIZED. */
int ws_server_on(struct ws_server *ws, const char *type, bool before_hello, ws_frame_fn fn,
                 void *ctx);
void ws_server_on_closed(struct ws_server *ws, ws_closed_fn fn, void *ctx);
/* Starts the service thread. Returns 0 or -1. */
int ws_server_start(struct ws_server *ws);
int ws_server_port(const struct ws_server *ws);
/* Closes every session with WS_CLOSE_SERVICE_RESTART (after flushing what is queued), stops the
 * service thread within timeout_ms and frees the server. */
void ws_server_stop(struct ws_server *ws, int timeout_ms);

/* Thread-safe. Queues a text frame (copied) for the session. Returns 0, or -1 when the
 * session is gone. A session whose queue would pass max_queue_bytes is closed
 * WS_CLOSE_POLICY. */
int ws_send(struct ws_server *ws, uint64_t sid, const char *text, size_t len);
/* Thread-safe. Serialises frame (borrowed) and queues it. */
int ws_send_json(struct ws_server *ws, uint64_t sid, const json_t *frame);
/* Thread-safe. Closes the session with code after what is already queued is sent. */
void ws_close(struct ws_server *ws, uint64_t sid, int code, const char *reason);
/* Thread-safe. Accepts the session: marks it authenticated (its hello deadline no
 * longer applies; frames of every registered type reach their handlers) and attaches
 * tag, which the closed callback hands back. Returns -1, and keeps nothing, when the
 * session is gone, already accepted or closing (also after a hello timeout): the
 * closed callback will then never see tag. On 0 the tag belongs to the session until
 * that callback runs on the service thread, which may be at once: a caller on another
 * thread must not touch tag after a 0 except by finding it again in its own registry,
 * under the lock its closed callback takes to unlink it. */
int ws_session_accept(struct ws_server *ws, uint64_t sid, void *tag);

/* Sends {"type":"error","code":code} (and proposal_id when not NULL). Thread-safe. */
void ws_send_error(struct ws_server *ws, uint64_t sid, const char *code, const char *proposal_id);

#endif
