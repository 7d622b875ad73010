/* The process's one LISTEN connection, shared by every capability that listens.
 *
 * PostgreSQL signals every LISTENing backend of a database at each commit that
 * notified, whatever channels they listen on, and each signalled backend wakes and reads
 * the notification queue. So every listening connection costs the database a wake-up per
 * notifying commit of any instance: one connection per instance for all channels, rather
 * than one per channel, halves that cost with two channels.
 *
 * A dedicated libpq connection outside the pool (on STEWARD_DATABASE_LISTEN_URL, so it
 * bypasses a transaction pooler) LISTENs on every channel added before listener_start.
 * When it breaks, a thread of its own reconnects with backoff and LISTENs again; each
 * channel's callbacks say what it should do then. Every callback runs on that thread. */
#ifndef STEWARD_LISTEN_H
#define STEWARD_LISTEN_H

#include <stdbool.h>

#include "steward/log.h"

#define LISTEN_MAX_CHANNELS 4

struct listen_channel {
    const char *name; /* an SQL identifier, LISTENed as written; the string must outlive
                         the listener */
    void *ctx;
    /* After every channel is LISTENed on a new connection. first: the process's first
     * connection (so no notification can have been missed before it). May be NULL. */
    void (*connected)(void *ctx, bool first);
    /* The connection broke; a new one is tried next. May be NULL. */
    void (*lost)(void *ctx);
    /* One notification on this channel, in the order PostgreSQL sent them. */
    void (*notify)(void *ctx, const char *payload);
    /* After the notifications of one read of the connection, when any was this
     * channel's (to act once for a burst). May be NULL. */
    void (*drained)(void *ctx);
    /* Once per round of the loop while connected: before each wait for the connection,
     * so after each read and at least once a second. May be NULL. */
    void (*tick)(void *ctx);
};

struct listener;

/* url: a libpq conninfo or URI (its own parameters win over steward's defaults, see
 * pool_connect). NULL when out of memory. */
struct listener *listener_new(const char *url, const struct logger *lg);
/* Adds a channel (copied) before listener_start; -1 past LISTEN_MAX_CHANNELS or once
 * started. */
int listener_add(struct listener *l, const struct listen_channel *ch);
/* Starts the thread; 0, or -1 when it could not. */
int listener_start(struct listener *l);
/* Stops and joins the thread (no callback runs after it returns); safe to call twice. */
void listener_stop(struct listener *l);
void listener_free(struct listener *l);

#endif
