/* Scouts, devices and at-least-once proposal delivery over WebSocket (docs/protocol.md).
 *
 * A scout watches one source of a user; the triage worker posts its verdicts as items;
 * relevant items become proposals queued for the user and delivered to the user's
 * connected devices (device protocol on ws.h), which ack them. PostgreSQL is the source
 * of truth: every instance holds only its own sockets and learns about proposals queued
 * elsewhere through LISTEN/NOTIFY on the process's listener (steward/listen.h). */
#ifndef STEWARD_SCOUTS_H
#define STEWARD_SCOUTS_H

#include <jansson.h>
#include <stdint.h>

#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/pool.h"
#include "steward/workq.h"

struct scouts;
struct sched;
struct lessons;
struct listener;
struct router;
struct ws_server;

struct scouts_settings {
    int proposal_ttl_days;       /* STEWARD_PROPOSAL_TTL_DAYS */
    int ack_timeout_s;           /* STEWARD_ACK_TIMEOUT_S */
    int max_delivery_attempts;   /* STEWARD_MAX_DELIVERY_ATTEMPTS */
    int max_inflight;            /* STEWARD_MAX_INFLIGHT */
    int ws_heartbeat_s;          /* STEWARD_WS_HEARTBEAT_S */
    int ws_max_frames_in_flight; /* STEWARD_WS_MAX_FRAMES_IN_FLIGHT (0: no cap) */
    int worker_queue_max;        /* STEWARD_WORKER_QUEUE_MAX (0: no bound) */
    int ws_hello_batch;          /* STEWARD_WS_HELLO_BATCH */
};

/* Creates the context. Everything is borrowed and must outlive it; ws and lessons may
 * be NULL (ws is then bound by scouts_ws_register, lessons NULL records nothing).
 * Starts no thread. Returns NULL when out of memory. */
struct scouts *scouts_new(struct pool *pool, const struct logger *lg, struct metrics *metrics,
                          struct workq *workq, struct ws_server *ws, struct lessons *lessons,
                          const struct scouts_settings *set);
/* Adds the scouts channel to l (before listener_start) and the periodic jobs
 * (ack-timeout sweep, presence refresh, retry of failed passes) to sc. Both must be
 * stopped before scouts_stop. Returns 0 or -1. */
int scouts_start(struct scouts *s, struct sched *sc, struct listener *l);
/* Refuses new device work and waits (bounded) for delivery jobs already running, so the
 * WebSocket server can be stopped after it. Idempotent. */
void scouts_stop(struct scouts *s);
/* NULL while the notification listener works; else why not, for /readyz: it has not
 * connected (or LISTENed) for SCOUTS_PROBE_WAIT_MS, or the probe it NOTIFYs through the
 * pool after each connect has not come back within that time. */
const char *scouts_listen_problem(struct scouts *s);
/* Frees the context (after scouts_stop and after the ws server and workq are gone).
 * NULL is a no-op. */
void scouts_free(struct scouts *s);

/* Registers the scouts, items, proposals and devices routes. ctx is stored, never
 * dereferenced here (it may be NULL for `steward routes`). Returns 0 or -1. */
int scouts_http_register(struct router *r, struct scouts *ctx);
/* Binds the WebSocket server to s and registers the device protocol handlers
 * (device_hello, scout_proposal_ack) and the close callback. Call before
 * ws_server_start. Returns 0 or -1. */
int scouts_ws_register(struct ws_server *ws, struct scouts *s);

/* One ack-timeout pass (docs/protocol.md), safe on several instances at once (conditional
 * UPDATE ... RETURNING): proposals delivered more than ack_timeout_s ago and unacked
 * go back to queued and their users' connected devices get them again (counted in
 * *requeued); those that already had max_delivery_attempts become failed with one
 * delivery_failed lesson each (counted in *failed). Returns ST_*. */
int scouts_delivery_sweep(struct scouts *s, long long *requeued, long long *failed);
/* Expires pending and failed proposals past expires_at, erasing subject and snippet.
 * *count gets how many. Returns ST_*. */
int scouts_expire(struct scouts *s, long long *count);
/* Delivery figures for proposals triaged since since_us: {"since", "counts": {status:
 * n}, "queued_to_delivered_ms": {"p50", "p95"}, "delivered_to_acked_ms": {"p50",
 * "p95"}} (percentiles null without data). *out is a new reference. Returns ST_*. */
int scouts_delivery_stats(struct scouts *s, int64_t since_us, json_t **out);
/* Deletes the user's scouts, devices and proposals inside the caller's transaction on
 * c (adding {"proposals", "devices", "scouts"} to counts), and queues a notification
 * (sent at commit) that closes the user's sockets on every instance. Returns ST_*. */
int scouts_erase_user_tx(struct scouts *s, struct pool_conn *c, const char *user_id,
                         json_t *counts);
/* After the erasure committed: closes this instance's sockets of the user with 4403
 * (other instances act on the notification). Never fails. */
void scouts_user_erased(struct scouts *s, const char *user_id);

#endif
