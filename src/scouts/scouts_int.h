/* Internals shared by the files of the scouts module (not a public interface). */
#ifndef STEWARD_SCOUTS_INT_H
#define STEWARD_SCOUTS_INT_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/users.h"
#include "steward/hash.h"
#include "steward/scouts.h"

/* ---- pure helpers of the delivery pass (docs/protocol.md): how the in-flight windows
 * of a user's sessions travel to the fetch-and-mark statement and how its answer names
 * the sessions a proposal goes to. No I/O; unit-tested. */
#define SCOUTS_ID_LEN 36 /* a canonical uuid */

/* The ids one session has in flight (borrowed). */
struct scouts_window {
    const char (*ids)[SCOUTS_ID_LEN + 1];
    int n;
};

/* The in-flight ids of n sessions as a JSON array with one array of id strings per
 * session, in order (malloc'd), or NULL when out of memory. Ids are canonical uuids as
 * the database wrote them (nothing to escape); at most SCOUTS_ID_LEN characters of each
 * are used. */
char *scouts_windows_json(const struct scouts_window *w, size_t n);

/* Parses a comma-separated list of 1-based session numbers, each in 1..nsess, into
 * 0-based indexes (*out malloc'd, NULL for an empty or NULL list). Returns 0, -1 when
 * malformed or out of range, -2 when out of memory; *out is NULL on failure. */
int scouts_parse_sessions(const char *list, size_t nsess, int **out, size_t *n);

#define SCOUTS_USER_MAX USERS_ID_MAX /* characters of a user id (the rule of src/users) */

/* The users of a grouped delivery pass (scouts_deliver_fetch_many): each user's id and
 * windows JSON text (scouts_windows_json) as {"u": user, "s": windows}, in order, in one
 * JSON array (malloc'd), or NULL when out of memory. User ids are escaped; windows are
 * taken as they are. */
char *scouts_users_json(const char *const *users, const char *const *windows, size_t n);

/* A PostgreSQL array literal {a,b,...} of n items (malloc'd), or NULL when out of memory.
 * Only for items that need no quoting: canonical uuids and hex digests. */
char *scouts_pg_array(const char *const *items, size_t n);

/* One device_hello of a batch (scouts_devices_hello). */
struct scouts_hello_check {
    const char *device_id;              /* in: a canonical uuid */
    const char *token;                  /* in: as the device sent it (borrowed) */
    char hash[65];                      /* the token's SHA-256 in hex */
    bool ok;                            /* out: the token matches the device's */
    char user[SCOUTS_USER_MAX * 4 + 1]; /* out: the device's user, when ok */
    long long seen;                     /* out: the last_seen_at written (us), when ok */
};

/* The statement's answer that device's token has the digest and belongs to user: marks
 * every hello of the n that names that device with that digest (a device may be named
 * twice, by two sockets, with the same or another token). */
void scouts_hello_mark(struct scouts_hello_check *h, size_t n, const char *device,
                       const char *digest, const char *user, long long seen);
#define SCOUTS_BUCKETS 16384 /* of each registry table */

/* One device session on this instance whose device_hello checked out; guarded by
 * scouts->mu. Linked before ws_session_accept and handed to it as the session's tag:
 * from then on only the closed callback (service thread) unlinks and frees it, so
 * every other thread reaches it by sid through by_sid under scouts->mu and keeps no
 * pointer to it past the unlock. */
struct scouts_sess {
    uint64_t sid;
    char device_id[SCOUTS_ID_LEN + 1];
    struct scouts_user *user;
    /* hello_ok is queued: delivery passes and resolved frames may reach the session */
    bool live;
    /* proposals sent in this session and not resolved yet (the in-flight window) */
    char (*sent)[SCOUTS_ID_LEN + 1];
    int nsent;
    int capsent;
    int acks_inflight; /* acks submitted and not answered yet */
    /* last_seen_at (us) the latest hello of this device here wrote: its close releases
     * the device only if no hello came since (scouts_devices_offline) */
    long long seen;
    struct scouts_sess *user_next; /* sessions of the same user */
    struct hash_node by_sid;       /* in scouts->by_sid */
};

/* A user with sessions here; carries the single-flight flags of delivery passes. */
struct scouts_user {
    char *user_id;
    struct scouts_sess *sessions;
    bool running;           /* a pass job owns the user's deliveries */
    bool dirty;             /* something changed while it ran: run again */
    struct hash_node by_id; /* in scouts->by_user */
};

#define SCOUTS_PROBE_WAIT_MS 5000 /* how long the listener's probe may take */

/* A device whose last socket here closed, waiting for the grouped release. */
struct scouts_offline {
    char device_id[SCOUTS_ID_LEN + 1];
    long long seen;
};

/* The users one read of the listener's connection asked passes for (scouts_drain_add). */
#define SCOUTS_DRAIN_MAX 256
struct scouts_drain {
    char *users[SCOUTS_DRAIN_MAX];
    size_t n;
};

/* ingest groups written at once, each by a leader thread of its own: one, so that the
 * items arriving while a group is written wait and make the next group bigger (fewer
 * commits, each of which wakes every listener of the database; docs/performance.md) */
#define SCOUTS_INGEST_LEADERS 1

struct scouts {
    struct pool *pool;
    const struct logger *lg;
    struct metrics *metrics;
    struct workq *workq;
    struct ws_server *ws;
    struct lessons *lessons;
    struct scouts_settings set;
    char instance[17]; /* random, names this process in notifications */

    pthread_mutex_t mu;        /* the session registry below */
    struct hash_table by_sid;  /* struct scouts_sess by sid */
    struct hash_table by_user; /* struct scouts_user by user id */

    /* closes waiting for their grouped release (guarded by mu): every 250 ms one job
     * writes what has gathered, then looks again until none is left (offline_running) */
    struct scouts_offline *offline;
    size_t noffline, capoffline;
    bool offline_running;
    atomic_bool lease_renewed; /* the lease row was written once: hellos need not */
    /* single ingests waiting to be written together (scouts_ingest_submit, group
     * commit): up to SCOUTS_INGEST_LEADERS jobs at a time, on threads of their own
     * (leaders), write the items waiting */
    struct workq *leaders;
    pthread_mutex_t imu;
    pthread_cond_t icv;
    struct scouts_ingest_wait *ingest_head, *ingest_tail;
    int ingest_leaders; /* leaders started and not finished */

    /* device_hellos waiting for their token check (scouts_ws.c): a list that one job at
     * a time drains, in batches of at most set.ws_hello_batch */
    pthread_mutex_t hmu;
    struct scouts_hello_wait *hello_head, *hello_tail;
    bool hello_draining; /* a drain job is submitted or running */
    /* scout_proposal_acks waiting for their statement (scouts_ws.c), under hmu as well:
     * one job at a time drains them, in batches of at most set.ws_hello_batch */
    struct scouts_ack_wait *ack_head, *ack_tail;
    size_t nack;       /* how many wait (bounded by set.worker_queue_max) */
    bool ack_draining; /* a drain job is submitted or running */

    atomic_bool stopping;
    atomic_bool retry_all; /* a pass failed: rerun every local user on the next tick */
    atomic_int jobs;       /* delivery jobs submitted and not finished */
    /* the rate-limited warning of rejected hellos: when the last was written, and how
     * many were left out since */
    atomic_llong hello_warn_ms;
    atomic_int hello_warn_skipped;

    /* the listener's probe (scouts_listen.c): its payload, and since when it has been
     * awaited (0: heard on the current connection) */
    char probe[64];
    atomic_llong probe_since_ms;
    atomic_bool listen_connected;
    /* on the listener's thread only: the probe is still to be sent, its warning was
     * written, and the passes one read of the connection asks for */
    bool probe_due, probe_warned;
    struct scouts_drain drain;
};

/* A pending proposal as a delivery pass sees it. */
struct scouts_pending {
    char id[SCOUTS_ID_LEN + 1];
    char *frame; /* the scout_proposal frame text (malloc'd), NULL when sent to nobody */
    size_t len;
    int *sessions; /* indexes of the pass's sessions to send it to (malloc'd) */
    size_t nsessions;
};

/* --- scouts.c: logic and SQL --- */

/* True when s is a canonical lowercase or uppercase uuid. */
bool scouts_uuid_valid(const char *s);
/* Lowercases a uuid in place: every id a client sends is canonicalised before it is
 * stored or compared with the database's (lowercase) form. */
void scouts_uuid_canon(char *s);

struct scouts_scout_in {
    const char *user_id;
    const char *provider;
    int enabled;          /* -1 unset */
    int auto_trash_spam;  /* -1 unset */
    long long pause_days; /* -1 unset */
};
int scouts_scout_create(struct scouts *s, const struct scouts_scout_in *in, const char *actor,
                        json_t **out);
int scouts_scout_get(struct scouts *s, const char *id, json_t **out);
int scouts_scout_patch(struct scouts *s, const char *id, const struct scouts_scout_in *in,
                       const char *actor, json_t **out);
int scouts_scout_delete(struct scouts *s, const char *id, const char *actor);

struct scouts_item_in {
    const char *source_msg_ref;
    bool spam;
    const char *reason;
    const char *subject;
    const char *snippet;
    const char *source_type;
};
/* Ingests one verdict. *status gets 201 or 200 and *out the body. ST_ENOTFOUND for an
 * unknown scout, ST_ECONFLICT for a disabled one. Waits in the caller's thread. */
int scouts_ingest(struct scouts *s, const char *scout_id, const struct scouts_item_in *in,
                  int *status, json_t **out);

/* The same without waiting: the caller fills scout_id, in and done, which must stay
 * valid until done(w) is called, exactly once, from whichever thread wrote the item's
 * group (or from this call, for an invalid id). done then reads rc (ST_OK or the
 * failure, as scouts_ingest returns it), status and out (owned by done from then on). */
struct scouts_ingest_wait {
    const char *scout_id;
    const struct scouts_item_in *in;
    void (*done)(struct scouts_ingest_wait *w);
    int rc;
    int status;
    json_t *out;
    struct scouts_ingest_wait *next; /* the queue (imu) */
};
void scouts_ingest_submit(struct scouts *s, struct scouts_ingest_wait *w);
/* Ingests n verdicts in one statement, each exactly as scouts_ingest would, in input
 * order. *out gets {"results": [one {"status", ...single route body} per item],
 * "queued": n}; an item that collided with a proposal gone again is status 409
 * {"queued": false, "reason": "conflict"}. ST_ENOTFOUND for an unknown scout and
 * ST_ECONFLICT for a disabled one (nothing ingested). */
#define SCOUTS_BATCH_MAX 500
int scouts_ingest_batch(struct scouts *s, const char *scout_id, const struct scouts_item_in *items,
                        size_t n, json_t **out);
/* Records a worker's run of the scout: last_run_at = now and, when set_cursor, its
 * cursor (NULL clears it). *out gets the scout. ST_ENOTFOUND for an unknown scout. */
#define SCOUTS_RUN_CURSOR_MAX 4096
int scouts_scout_run(struct scouts *s, const char *id, bool set_cursor, const char *cursor,
                     json_t **out);
/* Scouts newest first, of one user (user_id NULL: all), enabled 1 / 0 / -1 (any). */
int scouts_scouts_list(struct scouts *s, const char *user_id, int enabled, int limit, int64_t cur_a,
                       int64_t cur_b, bool has_cursor, json_t **out);
int scouts_proposals_list(struct scouts *s, const char *user_id, const char *status, int limit,
                          int64_t cur_a, int64_t cur_b, bool has_cursor, json_t **out);

int scouts_device_create(struct scouts *s, const char *user_id, const char *name, const char *actor,
                         json_t **out);
int scouts_devices_list(struct scouts *s, const char *user_id, int limit, int64_t cur_a,
                        int64_t cur_b, bool has_cursor, json_t **out);
int scouts_device_delete(struct scouts *s, const char *id, const char *actor);

/* A batch of device_hellos: checks every device's token and marks the devices whose
 * token matches seen and held by this instance, all in one statement; sets ok, user and
 * seen (the last_seen_at written, in microseconds: what the close compares) of each
 * hello (an unknown device or a wrong token stays !ok). Returns ST_OK, or the failure
 * (then no hello is ok). */
int scouts_devices_hello(struct scouts *s, struct scouts_hello_check *h, size_t n);
/* Releases devices whose last local socket closed, in one statement: ids and seen are
 * PostgreSQL array texts of the same length (uuids; the *seen of each one's latest hello
 * here). A device that said hello again since, here or elsewhere, is left alone. */
int scouts_devices_offline(struct scouts *s, const char *ids, const char *seen);
/* Releases every device held here and drops this instance's lease (graceful shutdown). */
int scouts_hosts_release(struct scouts *s);
/* Renews this instance's presence lease (and prunes those lapsed a day ago); sets
 * lease_renewed on success. */
int scouts_lease_renew(struct scouts *s);
/* Fills *gone (new reference) with those of the ids (PostgreSQL array text) that no
 * longer name a device; read-only. */
int scouts_devices_gone(struct scouts *s, const char *ids, json_t **gone);

/* One delivery pass in one statement: fetches the first `window` pending proposals of
 * the user, oldest first, decides per session (the windows JSON text, see
 * scouts_windows_json) what it is owed, marks those delivered and returns every pending
 * row in *rows (malloc'd; free with scouts_pending_free): frame and sessions are set on
 * the rows to send, and the ids of all of them tell which in-flight ids are still
 * pending. nsess is the number of sessions in windows. */
int scouts_deliver_fetch(struct scouts *s, const char *user_id, int window, const char *windows,
                         size_t nsess, struct scouts_pending **rows, size_t *n);
void scouts_pending_free(struct scouts_pending *rows, size_t n);

/* One user of a grouped delivery pass. */
struct scouts_pass_user {
    const char *user_id;         /* in */
    const char *windows;         /* in: its sessions' windows (scouts_windows_json) */
    size_t nsess;                /* in: how many sessions windows holds */
    struct scouts_pending *rows; /* out: as scouts_deliver_fetch's (scouts_pending_free) */
    size_t n;
};
/* scouts_deliver_fetch for n distinct users in one statement, each by the same rules;
 * on failure no user has rows. */
int scouts_deliver_fetch_many(struct scouts *s, int window, struct scouts_pass_user *u, size_t n);
/* One ack of a batch (scouts_acks). */
struct scouts_ack_item {
    const char *pid;       /* in: a canonical uuid */
    const char *user_id;   /* in: the acking session's user */
    const char *device_id; /* in: its device, a canonical uuid */
    bool found;            /* out: false: unknown or another user's */
    bool changed;          /* out: this ack flipped it (and queued the notification) */
};
/* Acks n proposals in one statement, each as if alone, in order: of acks naming the same
 * proposal of the same user the first flips it, the others find it acked. On failure
 * nothing changed and every ack has found and changed false. */
int scouts_acks(struct scouts *s, struct scouts_ack_item *a, size_t n);

/* Warms the pool for the ingest and delivery paths: checks out every connection free
 * now at once (which opens those not open yet) and runs on each the statements of
 * those paths (ingest, delivery pass, device auth and presence, ack) with inputs that
 * match no row, so that the connection is established, the statements are prepared
 * and the backend's catalog caches and the ingest function are loaded before the
 * first proposal has to wait for them. *warmed gets the connections done. Returns ST_OK,
 * ST_EUNAVAIL when no connection could be had (the database is away), or the first
 * statement failure. */
int scouts_warm(struct scouts *s, int *warmed);

/* --- scouts_ws.c: sessions and delivery passes --- */

/* Runs (or flags for a rerun) a delivery pass for the user's sessions here. */
void scouts_request_pass(struct scouts *s, const char *user_id);
/* The same for n users, in grouped passes of up to ws_hello_batch users (one statement
 * each); reorders users. */
void scouts_request_passes(struct scouts *s, char **users, size_t n);

/* The notifications one read of the listener's connection brought: the users owed a
 * pass are gathered (each once) and their passes run grouped, so a burst of ingests
 * costs a statement per group rather than per proposal; the rest is handled at once. */
void scouts_drain_add(struct scouts *s, struct scouts_drain *d, const char *payload);
/* Requests the gathered passes and empties d. */
void scouts_drain_flush(struct scouts *s, struct scouts_drain *d);
/* Runs a pass for every user with sessions here (after the listener reconnected). */
void scouts_catch_up(struct scouts *s);
/* Handles a payload received on the notification channel. */
void scouts_on_notify(struct scouts *s, const char *payload);
/* Renews this instance's presence lease (one statement, whatever it holds). */
void scouts_presence_tick(struct scouts *s);
/* After the listener reconnected: closes (4403) sessions of devices deleted while no
 * notification could be heard, checked in read-only statements of 256 ids (a job). */
void scouts_recheck_devices(struct scouts *s);
/* Starts the grouped release of the devices whose last socket here closed, unless it
 * runs or none is waiting (the retry job, every 250 ms). */
void scouts_offline_flush(struct scouts *s);
/* Submits a job (arg is one malloc'd block, freed after the job) counted for
 * shutdown; returns 0 or -1 (arg freed then). */
int scouts_submit(struct scouts *s, void (*fn)(struct scouts *, void *), void *arg);
/* The same for an ingest group's leader, on the leader threads: it runs even while the
 * instance stops (someone waits for it). */
int scouts_submit_leader(struct scouts *s, void (*fn)(struct scouts *, void *), void *arg);
/* Frees the session registry and the hellos still waiting (at scouts_free). */
void scouts_sessions_free(struct scouts *s);

#endif
