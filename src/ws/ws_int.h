/* The WebSocket server's private parts, exposed to its unit and fuzz tests. */
#ifndef STEWARD_WS_INT_H
#define STEWARD_WS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/ws.h"

/* Handles one complete text frame (text[0..len), need not be NUL-terminated) as if it
 * had arrived on session sid: parses it, answers bad_frame / unauthorized (+ close
 * WS_CLOSE_UNAUTHORIZED before hello) / unknown_type, or calls the registered handler.
 * The socket side calls it for every frame; fuzz targets call it with a session id that
 * has no socket (what is sent to it is then dropped). Service thread only (or a thread
 * standing in for it). */
void ws_dispatch_frame(struct ws_server *ws, uint64_t sid, bool authed, const char *text,
                       size_t len);

/* Sessions awaiting device_hello, oldest first. Every session gets the same timeout, so
 * arrival order is deadline order: one timer armed for the head serves them all, and a
 * connect or a close costs O(1) (a per-connection timer would be a sorted insert).
 * Intrusive: the node lives in the session. Not thread-safe (service thread only). */
struct ws_hello_node {
    struct ws_hello_node *prev, *next;
    int64_t deadline_ms;
    bool queued;
};
struct ws_hello_fifo {
    struct ws_hello_node *head, *tail;
    size_t len;
};
/* Appends n (not queued) due at deadline_ms; a deadline earlier than the tail's is
 * raised to it, so the queue stays sorted. */
void ws_hello_push(struct ws_hello_fifo *q, struct ws_hello_node *n, int64_t deadline_ms);
/* Unlinks n; nothing when n is not queued. */
void ws_hello_remove(struct ws_hello_fifo *q, struct ws_hello_node *n);
/* Unlinks and returns the head when it is due at now_ms, else NULL. */
struct ws_hello_node *ws_hello_pop_due(struct ws_hello_fifo *q, int64_t now_ms);
/* Milliseconds until the head is due (0 when overdue), -1 when the queue is empty. */
int64_t ws_hello_next_due(const struct ws_hello_fifo *q, int64_t now_ms);

#endif
