/* The device protocol on the WebSocket layer (docs/protocol.md): device_hello, scout_proposal
 * delivery within the in-flight window, scout_proposal_ack and resolved frames.
 *
 * Frame handlers run on the libwebsockets service thread: they only parse, look at the
 * in-memory session registry and submit jobs; every database call happens in a job on
 * the work queue, and frames go back through ws_send. Deliveries to a user's sessions
 * on this instance run single-flight (one pass job per user at a time, rerun when
 * something changed meanwhile), so a proposal is never sent twice in one pass and
 * frames of a session stay in order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scouts_int.h"
#include "scouts_notify.h"
#include "steward/clock.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/ws.h"

#define TOKEN_MAX 256
#define CLIENT_FIELD_MAX 64 /* device_hello's client.name and client.version */
#define RECHECK_CHUNK 256   /* device ids per statement of the check after a reconnect */
#define OFFLINE_CHUNK 1000  /* devices per statement of the grouped release */

/* ------------------------------------------------------------ registry (s->mu held) */

static struct scouts_user *user_find_locked(struct scouts *s, const char *user_id)
{
    uint64_t h = hash_str(user_id);
    for (struct hash_node *n = hash_first(&s->by_user, h); n; n = hash_next(n)) {
        struct scouts_user *u = hash_entry(n, struct scouts_user, by_id);
        if (strcmp(u->user_id, user_id) == 0)
            return u;
    }
    return NULL;
}

static struct scouts_user *user_get_locked(struct scouts *s, const char *user_id)
{
    struct scouts_user *u = user_find_locked(s, user_id);
    if (u)
        return u;
    u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->user_id = strdup(user_id);
    if (!u->user_id) {
        free(u);
        return NULL;
    }
    hash_insert(&s->by_user, &u->by_id, hash_str(user_id));
    return u;
}

static void user_free_locked(struct scouts *s, struct scouts_user *u)
{
    hash_remove(&s->by_user, &u->by_id);
    free(u->user_id);
    free(u);
}

static void user_maybe_free_locked(struct scouts *s, struct scouts_user *u)
{
    if (!u->sessions && !u->running)
        user_free_locked(s, u);
}

static struct scouts_sess *sess_find_locked(struct scouts *s, uint64_t sid)
{
    for (struct hash_node *n = hash_first(&s->by_sid, hash_u64(sid)); n; n = hash_next(n)) {
        struct scouts_sess *x = hash_entry(n, struct scouts_sess, by_sid);
        if (x->sid == sid)
            return x;
    }
    return NULL;
}

/* Unlinks and frees a session; returns true when no other session of its device is
 * left on this instance. The others of its device take its seen when later (the latest
 * hello here is the one a release must match). */
static bool sess_remove_locked(struct scouts *s, struct scouts_sess *x)
{
    hash_remove(&s->by_sid, &x->by_sid);
    struct scouts_user *u = x->user;
    bool last = true;
    for (struct scouts_sess **pp = &u->sessions; *pp;) {
        if (*pp == x) {
            *pp = x->user_next;
            continue;
        }
        if (strcmp((*pp)->device_id, x->device_id) == 0) {
            last = false;
            if ((*pp)->seen < x->seen)
                (*pp)->seen = x->seen;
        }
        pp = &(*pp)->user_next;
    }
    free(x->sent);
    free(x);
    user_maybe_free_locked(s, u);
    return last;
}

static int sent_find(const struct scouts_sess *x, const char *id)
{
    for (int i = 0; i < x->nsent; i++)
        if (strcmp(x->sent[i], id) == 0)
            return i;
    return -1;
}

static void sent_remove(struct scouts_sess *x, const char *id)
{
    int i = sent_find(x, id);
    if (i < 0)
        return;
    memmove(&x->sent[i], &x->sent[i + 1], (size_t)(x->nsent - i - 1) * sizeof(x->sent[0]));
    x->nsent--;
}

static bool sent_add(struct scouts_sess *x, const char *id)
{
    if (x->nsent == x->capsent) {
        int cap = x->capsent ? x->capsent * 2 : 8;
        void *n = realloc(x->sent, (size_t)cap * sizeof(x->sent[0]));
        if (!n)
            return false;
        x->sent = n;
        x->capsent = cap;
    }
    snprintf(x->sent[x->nsent++], SCOUTS_ID_LEN + 1, "%s", id);
    return true;
}

/* ------------------------------------------------------------ jobs */

struct job {
    struct scouts *s;
    void (*fn)(struct scouts *, void *);
    void *arg;
    bool when_stopping; /* runs even after scouts_stop (touches no socket) */
};

enum how { JOB_NORMAL, JOB_URGENT, JOB_BOUNDED, JOB_LEADER };

static void job_run(void *p)
{
    struct job *j = p;
    if (j->when_stopping || !atomic_load(&j->s->stopping))
        j->fn(j->s, j->arg);
    free(j->arg);
    atomic_fetch_sub(&j->s->jobs, 1);
    free(j);
}

/* Returns 0, -1 (stopping, out of memory) or -2 (JOB_BOUNDED and the queue is full);
 * arg is freed on failure. */
static int submit_how(struct scouts *s, void (*fn)(struct scouts *, void *), void *arg,
                      bool when_stopping, enum how how)
{
    struct job *j = malloc(sizeof(*j));
    if (!j) {
        free(arg);
        return -1;
    }
    *j = (struct job){s, fn, arg, when_stopping};
    atomic_fetch_add(&s->jobs, 1);
    int rc;
    if (how == JOB_LEADER)
        rc = workq_submit(s->leaders, job_run, j);
    else if (how == JOB_URGENT)
        rc = workq_submit_urgent(s->workq, job_run, j);
    else if (how == JOB_BOUNDED)
        rc = workq_submit_bounded(s->workq, job_run, j, s->set.worker_queue_max);
    else
        rc = workq_submit(s->workq, job_run, j);
    if (rc != 0) {
        atomic_fetch_sub(&s->jobs, 1);
        free(arg);
        free(j);
        return rc;
    }
    return 0;
}

static int submit(struct scouts *s, void (*fn)(struct scouts *, void *), void *arg,
                  bool when_stopping)
{
    return submit_how(s, fn, arg, when_stopping, JOB_NORMAL);
}

int scouts_submit(struct scouts *s, void (*fn)(struct scouts *, void *), void *arg)
{
    return submit(s, fn, arg, false);
}

int scouts_submit_leader(struct scouts *s, void (*fn)(struct scouts *, void *), void *arg)
{
    return submit_how(s, fn, arg, true, JOB_LEADER);
}

static void send_text(struct scouts *s, uint64_t sid, const char *text, size_t len,
                      enum metrics_counter c)
{
    if (ws_send(s->ws, sid, text, len) == 0)
        metrics_count(s->metrics, c, 1);
}

static void send_json(struct scouts *s, uint64_t sid, json_t *frame, enum metrics_counter c)
{
    if (!frame)
        return;
    if (ws_send_json(s->ws, sid, frame) == 0)
        metrics_count(s->metrics, c, 1);
    json_decref(frame);
}

static void send_error(struct scouts *s, uint64_t sid, const char *code, const char *pid)
{
    metrics_count(s->metrics, MC_WS_FRAMES_OUT_ERROR, 1);
    ws_send_error(s->ws, sid, code, pid);
}

/* ------------------------------------------------------------ delivery passes */

struct snap {
    uint64_t sid;
    char (*sent)[SCOUTS_ID_LEN + 1];
    int nsent;
};

static void snaps_free(struct snap *sn, size_t n)
{
    if (!sn)
        return;
    for (size_t i = 0; i < n; i++)
        free(sn[i].sent);
    free(sn);
}

/* Copies the user's sessions and their windows. */
static struct snap *snapshot(struct scouts *s, const char *user_id, size_t *n)
{
    *n = 0;
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, user_id);
    size_t count = 0;
    for (struct scouts_sess *x = u ? u->sessions : NULL; x; x = x->user_next)
        count += x->live;
    struct snap *sn = count ? calloc(count, sizeof(*sn)) : NULL;
    if (sn) {
        for (struct scouts_sess *x = u->sessions; x; x = x->user_next) {
            if (!x->live)
                continue;
            struct snap *p = &sn[*n];
            p->sid = x->sid;
            if (x->nsent) {
                p->sent = malloc((size_t)x->nsent * sizeof(p->sent[0]));
                if (!p->sent)
                    continue;
                memcpy(p->sent, x->sent, (size_t)x->nsent * sizeof(p->sent[0]));
                p->nsent = x->nsent;
            }
            (*n)++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return sn;
}

static bool in_rows(const struct scouts_pending *rows, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].id, id) == 0)
            return true;
    return false;
}

/* True when the session at index i of the pass is among the row's receivers. */
static bool row_for(const struct scouts_pending *row, size_t i)
{
    for (size_t k = 0; k < row->nsessions; k++)
        if ((size_t)row->sessions[k] == i)
            return true;
    return false;
}

/* The in-flight windows of the snapshot's sessions as JSON text (malloc'd), or NULL. */
static char *snap_windows(const struct snap *sn, size_t nsn)
{
    struct scouts_window *wins = calloc(nsn ? nsn : 1, sizeof(*wins));
    if (!wins)
        return NULL;
    for (size_t i = 0; i < nsn; i++)
        wins[i] =
            (struct scouts_window){(const char(*)[SCOUTS_ID_LEN + 1]) sn[i].sent, sn[i].nsent};
    char *windows = scouts_windows_json(wins, nsn);
    free(wins);
    return windows;
}

/* What a pass fetched for the snapshot's sessions: records the windows, then sends
 * outside the lock (frames of a user only ever go out from the one pass that owns the
 * user, so their order holds). */
static int pass_apply(struct scouts *s, const struct snap *sn, size_t nsn,
                      const struct scouts_pending *rows, size_t nrows)
{
    bool *send = calloc(nsn * (nrows ? nrows : 1), sizeof(bool)); /* nsn x nrows */
    if (!send)
        return ST_ENOMEM;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < nsn; i++) {
        struct scouts_sess *x = sess_find_locked(s, sn[i].sid);
        if (!x)
            continue;
        /* what is no longer pending (acked elsewhere, expired, failed) leaves the window */
        for (int k = x->nsent - 1; k >= 0; k--)
            if (!in_rows(rows, nrows, x->sent[k]))
                sent_remove(x, x->sent[k]);
        for (size_t r = 0; r < nrows; r++) {
            bool *b = &send[i * nrows + r];
            *b = rows[r].frame && row_for(&rows[r], i);
            if (*b && sent_find(x, rows[r].id) < 0 && !sent_add(x, rows[r].id))
                *b = false;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < nsn; i++)
        for (size_t r = 0; r < nrows; r++)
            if (send[i * nrows + r])
                send_text(s, sn[i].sid, rows[r].frame, rows[r].len, MC_WS_FRAMES_OUT_PROPOSAL);
    free(send);
    return ST_OK;
}

/* One pass: what each session of the user here is owed, within its window, fetched and
 * marked delivered in one statement (scouts_deliver_fetch). */
static int pass_once(struct scouts *s, const char *user_id)
{
    size_t nsn = 0, nrows = 0;
    struct scouts_pending *rows = NULL;
    struct snap *sn = snapshot(s, user_id, &nsn);
    if (!sn)
        return ST_OK;
    int rc = ST_ENOMEM;
    char *windows = snap_windows(sn, nsn);
    if (windows)
        rc = scouts_deliver_fetch(s, user_id, s->set.max_inflight, windows, nsn, &rows, &nrows);
    if (rc == ST_OK)
        rc = pass_apply(s, sn, nsn, rows, nrows);
    free(windows);
    scouts_pending_free(rows, nrows);
    snaps_free(sn, nsn);
    return rc;
}

/* Runs passes for the user until nothing changed meanwhile; the caller set running. */
static void pass_loop(struct scouts *s, const char *user_id)
{
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct scouts_user *u = user_find_locked(s, user_id);
        if (u)
            u->dirty = false;
        pthread_mutex_unlock(&s->mu);
        if (!u)
            return;
        int rc = pass_once(s, user_id);
        if (rc != ST_OK) {
            /* the database is away: the timer retries every user once it answers */
            atomic_store(&s->retry_all, true);
            log_msg(s->lg, LOG_WARN, "proposal delivery pass failed", "error", st_strerror(rc),
                    NULL);
        }
        pthread_mutex_lock(&s->mu);
        u = user_find_locked(s, user_id);
        bool again = rc == ST_OK && u->dirty && u->sessions && !atomic_load(&s->stopping);
        if (!again) {
            u->running = false;
            u->dirty = false;
            user_maybe_free_locked(s, u);
        }
        pthread_mutex_unlock(&s->mu);
        if (!again)
            return;
    }
}

/* Claims the user's deliveries: true when the caller must run pass_loop. */
static bool claim(struct scouts *s, const char *user_id)
{
    bool mine = false;
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, user_id);
    if (u && u->sessions) {
        if (u->running) {
            u->dirty = true;
        } else {
            u->running = true;
            mine = true;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return mine;
}

struct user_arg {
    char user_id[SCOUTS_USER_MAX * 4 + 1];
};

static void pass_job(struct scouts *s, void *arg)
{
    pass_loop(s, ((struct user_arg *)arg)->user_id);
}

static void release_claim(struct scouts *s, const char *user_id)
{
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, user_id);
    if (u) {
        u->running = false;
        user_maybe_free_locked(s, u);
    }
    pthread_mutex_unlock(&s->mu);
}

void scouts_request_pass(struct scouts *s, const char *user_id)
{
    if (atomic_load(&s->stopping) || !claim(s, user_id))
        return;
    struct user_arg *a = malloc(sizeof(*a));
    if (a)
        snprintf(a->user_id, sizeof(a->user_id), "%s", user_id);
    if (!a || submit(s, pass_job, a, false) != 0) {
        release_claim(s, user_id);
        atomic_store(&s->retry_all, true);
    }
}

/* After a grouped pass: the user goes on in pass_loop when something changed meanwhile
 * (and its pass worked), else its claim ends. */
static void group_finish(struct scouts *s, const char *user_id, int rc)
{
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, user_id);
    bool again = rc == ST_OK && u->dirty && u->sessions && !atomic_load(&s->stopping);
    if (!again) {
        u->running = false;
        u->dirty = false;
        user_maybe_free_locked(s, u);
    }
    pthread_mutex_unlock(&s->mu);
    if (again)
        pass_loop(s, user_id);
}

/* One pass for each of n distinct users, all in one statement
 * (scouts_deliver_fetch_many); the caller claimed every one of them. Each user's frames
 * go out as pass_once's would; users made dirty meanwhile then run pass_loop, one after
 * the other on this thread. */
static void pass_group(struct scouts *s, char *const *users, size_t n)
{
    struct group_user {
        struct snap *sn;
        size_t nsn;
        char *windows;
        int rc;
    } *g = calloc(n ? n : 1, sizeof(*g));
    struct scouts_pass_user *pu = calloc(n ? n : 1, sizeof(*pu));
    size_t m = 0;
    int rc = g && pu ? ST_OK : ST_ENOMEM;
    for (size_t i = 0; i < n && rc == ST_OK; i++) {
        g[i].sn = snapshot(s, users[i], &g[i].nsn);
        if (!g[i].sn)
            continue; /* no live session: nothing to fetch */
        if (!(g[i].windows = snap_windows(g[i].sn, g[i].nsn)))
            rc = ST_ENOMEM;
        else
            pu[m++] = (struct scouts_pass_user){users[i], g[i].windows, g[i].nsn, NULL, 0};
    }
    if (rc == ST_OK && m > 0)
        rc = scouts_deliver_fetch_many(s, s->set.max_inflight, pu, m);
    for (size_t i = 0, k = 0; i < n; i++) {
        if (rc != ST_OK || !g[i].sn)
            continue;
        if ((g[i].rc = pass_apply(s, g[i].sn, g[i].nsn, pu[k].rows, pu[k].n)) != ST_OK &&
            rc == ST_OK)
            atomic_store(&s->retry_all, true);
        k++;
    }
    if (rc != ST_OK) {
        /* the database is away: the timer retries every user once it answers */
        atomic_store(&s->retry_all, true);
        struct log_line l;
        log_begin(&l, s->lg, LOG_WARN, "proposal delivery pass failed");
        log_str(&l, "error", st_strerror(rc));
        log_int(&l, "users", (long long)n);
        log_end(&l);
    }
    for (size_t i = 0; i < n; i++)
        group_finish(s, users[i], rc != ST_OK ? rc : g[i].rc);
    for (size_t k = 0; k < m; k++)
        scouts_pending_free(pu[k].rows, pu[k].n);
    for (size_t i = 0; g && i < n; i++) {
        free(g[i].windows);
        snaps_free(g[i].sn, g[i].nsn);
    }
    free(pu);
    free(g);
}

/* The users of a grouped pass job, in one block (freed with the job). */
struct group_arg {
    size_t n;
    char *users[]; /* into the same block */
};

static struct group_arg *group_arg_new(char *const *users, size_t n)
{
    size_t size = sizeof(struct group_arg) + n * sizeof(char *);
    for (size_t i = 0; i < n; i++)
        size += strlen(users[i]) + 1;
    struct group_arg *a = malloc(size);
    if (!a)
        return NULL;
    a->n = n;
    char *p = (char *)&a->users[n];
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(users[i]) + 1;
        memcpy(p, users[i], len);
        a->users[i] = p;
        p += len;
    }
    return a;
}

static void group_job(struct scouts *s, void *arg)
{
    struct group_arg *a = arg;
    pass_group(s, a->users, a->n);
}

static size_t local_users(struct scouts *s, char ***out)
{
    pthread_mutex_lock(&s->mu);
    size_t cap = s->by_user.len;
    char **list = cap ? calloc(cap, sizeof(char *)) : NULL;
    size_t n = 0;
    struct hash_iter it = hash_iter(&s->by_user);
    for (struct hash_node *h; list && (h = hash_iter_next(&it)) != NULL;) {
        struct scouts_user *u = hash_entry(h, struct scouts_user, by_id);
        if (u->sessions && (list[n] = strdup(u->user_id)))
            n++;
    }
    pthread_mutex_unlock(&s->mu);
    *out = list;
    return n;
}

void scouts_request_passes(struct scouts *s, char **users, size_t n)
{
    if (n == 1) {
        scouts_request_pass(s, users[0]);
        return;
    }
    size_t per = s->set.ws_hello_batch > 0 ? (size_t)s->set.ws_hello_batch : 1;
    for (size_t from = 0; from < n && !atomic_load(&s->stopping); from += per) {
        size_t to = from + per < n ? from + per : n, m = 0;
        for (size_t i = from; i < to; i++) {
            if (!claim(s, users[i]))
                continue;
            /* the claimed ones to the front of the range */
            char *tmp = users[from + m];
            users[from + m++] = users[i];
            users[i] = tmp;
        }
        if (m == 0)
            continue;
        struct group_arg *a = group_arg_new(users + from, m);
        if (!a || submit(s, group_job, a, false) != 0) {
            for (size_t i = from; i < from + m; i++)
                release_claim(s, users[i]);
            atomic_store(&s->retry_all, true);
        }
    }
}

/* In jobs of at most ws_hello_batch users, each one grouped pass (users whose pass is
 * running get it rerun instead). */
void scouts_catch_up(struct scouts *s)
{
    char **users;
    size_t n = local_users(s, &users);
    if (n > 1)
        scouts_request_passes(s, users, n);
    else if (n == 1)
        scouts_request_pass(s, users[0]);
    for (size_t i = 0; i < n; i++)
        free(users[i]);
    free(users);
}

/* ------------------------------------------------------------ closing sessions */

static void close_where(struct scouts *s, const char *user_id, const char *device_id, int code)
{
    uint64_t sids[64];
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, user_id);
    for (struct scouts_sess *x = u ? u->sessions : NULL; x && n < 64; x = x->user_next)
        if (!device_id || strcmp(x->device_id, device_id) == 0)
            sids[n++] = x->sid;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++)
        ws_close(s->ws, sids[i], code, "revoked");
}

void scouts_user_erased(struct scouts *s, const char *user_id)
{
    if (s && s->ws)
        close_where(s, user_id, NULL, WS_CLOSE_REVOKED);
}

/* A proposal of the user was acked (here or elsewhere): it leaves every window, and
 * the sessions of other devices hear that it is resolved. Returns true when a window of
 * the user's sessions here was full before, so proposals may be waiting for the room
 * the ack made, or when a pass of the user is running (it may have read the proposal
 * as pending and fill the window up to the brim): only then does a pass follow (the
 * running one reruns). A window with room after a finished pass already holds
 * everything that was pending then, and whatever is queued later wakes a pass of its
 * own. */
static bool resolved(struct scouts *s, const char *user_id, const char *pid,
                     const char *acking_device)
{
    uint64_t sids[64];
    size_t n = 0;
    bool full = false;
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, user_id);
    if (u)
        full = u->running;
    for (struct scouts_sess *x = u ? u->sessions : NULL; x; x = x->user_next) {
        full |= x->nsent >= s->set.max_inflight;
        sent_remove(x, pid);
        if (x->live && strcmp(x->device_id, acking_device) != 0 && n < 64)
            sids[n++] = x->sid;
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++)
        send_json(s, sids[i],
                  json_pack("{s:s, s:s}", "type", "scout_proposal_resolved", "proposal_id", pid),
                  MC_WS_FRAMES_OUT_RESOLVED);
    return full;
}

void scouts_drain_add(struct scouts *s, struct scouts_drain *d, const char *payload)
{
    struct scouts_notify n;
    if (scouts_notify_parse(payload, &n) != 0 || n.kind != SCOUTS_NOTIFY_QUEUED) {
        scouts_on_notify(s, payload);
        return;
    }
    /* only users held here: the others' notifications cost nothing more */
    pthread_mutex_lock(&s->mu);
    struct scouts_user *u = user_find_locked(s, n.user);
    bool held = u && u->sessions;
    pthread_mutex_unlock(&s->mu);
    if (!held)
        return;
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->users[i], n.user) == 0)
            return; /* once per drain: a second claim would only mark it to run again */
    char *copy = strdup(n.user);
    if (!copy) {
        scouts_request_pass(s, n.user);
        return;
    }
    d->users[d->n++] = copy;
    if (d->n == SCOUTS_DRAIN_MAX)
        scouts_drain_flush(s, d);
}

void scouts_drain_flush(struct scouts *s, struct scouts_drain *d)
{
    if (d->n > 0)
        scouts_request_passes(s, d->users, d->n);
    for (size_t i = 0; i < d->n; i++)
        free(d->users[i]);
    d->n = 0;
}

void scouts_on_notify(struct scouts *s, const char *payload)
{
    struct scouts_notify n;
    if (scouts_notify_parse(payload, &n) != 0)
        return; /* not ours, or from a newer instance: nothing to do here */
    switch (n.kind) {
    case SCOUTS_NOTIFY_QUEUED:
        scouts_request_pass(s, n.user);
        break;
    case SCOUTS_NOTIFY_ACKED:
        /* this instance told its own sessions when it took the ack */
        if (strcmp(n.instance, s->instance) != 0 && resolved(s, n.user, n.proposal, n.device))
            scouts_request_pass(s, n.user);
        break;
    case SCOUTS_NOTIFY_DEVICE_GONE:
        close_where(s, n.user, n.device, WS_CLOSE_REVOKED);
        break;
    case SCOUTS_NOTIFY_USER_ERASED:
        close_where(s, n.user, NULL, WS_CLOSE_REVOKED);
        break;
    }
}

/* ------------------------------------------------------------ presence */

void scouts_presence_tick(struct scouts *s)
{
    /* the database is away when it fails: the next tick tries again, and the devices
     * held here stay online until the lease lapses */
    scouts_lease_renew(s);
}

/* "{a,b,...}": a PostgreSQL array text of ids (uuids need no quoting), malloc'd. */
static char *ids_array(json_t *ids, size_t from, size_t to)
{
    char *text = malloc((to - from) * (SCOUTS_ID_LEN + 1) + 3);
    if (!text)
        return NULL;
    size_t len = 0;
    text[len++] = '{';
    for (size_t i = from; i < to; i++)
        len += (size_t)sprintf(text + len, "%s%.*s", i > from ? "," : "", SCOUTS_ID_LEN,
                               json_string_value(json_array_get(ids, i)));
    text[len++] = '}';
    text[len] = '\0';
    return text;
}

/* Closes the sessions of those devices in ids[from, to) the database no longer has, in
 * one read-only statement; returns its outcome. */
static int recheck_chunk(struct scouts *s, json_t *ids, json_t *users, size_t from, size_t to)
{
    char *text = ids_array(ids, from, to);
    json_t *gone = NULL;
    int rc = text ? scouts_devices_gone(s, text, &gone) : ST_ENOMEM;
    if (rc == ST_OK) {
        size_t i;
        json_t *g;
        json_array_foreach(gone, i, g)
        {
            for (size_t k = from; k < to; k++) {
                if (json_equal(g, json_array_get(ids, k))) {
                    close_where(s, json_string_value(json_array_get(users, k)),
                                json_string_value(g), WS_CLOSE_REVOKED);
                    break;
                }
            }
        }
    }
    json_decref(gone);
    free(text);
    return rc;
}

/* A device deleted while the listener was down was never heard of: its sessions here are
 * found now, in statements of at most RECHECK_CHUNK ids (one for 10,000 would hold a
 * core for long). The first that fails ends the check: the database is away, and the
 * listener's next reconnect checks again. */
static void recheck_job(struct scouts *s, void *arg)
{
    (void)arg;
    json_t *ids = json_array();
    json_t *users = json_array();
    pthread_mutex_lock(&s->mu);
    struct hash_iter it = hash_iter(&s->by_sid);
    for (struct hash_node *h; (h = hash_iter_next(&it)) != NULL;) {
        struct scouts_sess *x = hash_entry(h, struct scouts_sess, by_sid);
        json_array_append_new(ids, json_string(x->device_id));
        json_array_append_new(users, json_string(x->user->user_id));
    }
    pthread_mutex_unlock(&s->mu);
    size_t n = json_array_size(ids);
    for (size_t from = 0; from < n; from += RECHECK_CHUNK) {
        size_t to = from + RECHECK_CHUNK < n ? from + RECHECK_CHUNK : n;
        if (recheck_chunk(s, ids, users, from, to) != ST_OK)
            break;
    }
    json_decref(ids);
    json_decref(users);
}

void scouts_recheck_devices(struct scouts *s)
{
    pthread_mutex_lock(&s->mu);
    bool any = s->by_sid.len > 0;
    pthread_mutex_unlock(&s->mu);
    if (any)
        submit(s, recheck_job, NULL, false);
}

/* ------------------------------------------------------------ releases */

/* Queues the release of a device whose last socket here closed (s->mu held); the retry
 * job (every 250 ms) hands what gathered to the release job. Out of memory, the device
 * stays held until it says hello again or this instance stops. */
static void offline_push_locked(struct scouts *s, const char *device_id, long long seen)
{
    if (s->noffline == s->capoffline) {
        size_t cap = s->capoffline ? s->capoffline * 2 : 64;
        struct scouts_offline *n = realloc(s->offline, cap * sizeof(*n));
        if (!n)
            return;
        s->offline = n;
        s->capoffline = cap;
    }
    struct scouts_offline *o = &s->offline[s->noffline++];
    snprintf(o->device_id, sizeof(o->device_id), "%s", device_id);
    o->seen = seen;
}

/* Writes the releases of o[0..n) in statements of OFFLINE_CHUNK devices. */
static int offline_write(struct scouts *s, const struct scouts_offline *o, size_t n)
{
    for (size_t from = 0; from < n; from += OFFLINE_CHUNK) {
        size_t k = n - from < OFFLINE_CHUNK ? n - from : OFFLINE_CHUNK;
        char *ids = malloc(k * (SCOUTS_ID_LEN + 1) + 3);
        char *seen = malloc(k * 21 + 3);
        int rc = ST_ENOMEM;
        if (ids && seen) {
            size_t li = 0, ls = 0;
            ids[li++] = '{';
            seen[ls++] = '{';
            for (size_t i = 0; i < k; i++) {
                li += (size_t)sprintf(ids + li, "%s%s", i ? "," : "", o[from + i].device_id);
                ls += (size_t)sprintf(seen + ls, "%s%lld", i ? "," : "", o[from + i].seen);
            }
            snprintf(ids + li, 2, "}");
            snprintf(seen + ls, 2, "}");
            rc = scouts_devices_offline(s, ids, seen);
        }
        free(ids);
        free(seen);
        if (rc != ST_OK)
            return rc;
        metrics_count(s->metrics, MC_PRESENCE_RELEASE_STATEMENTS, 1);
        metrics_count(s->metrics, MC_PRESENCE_RELEASED, k);
    }
    return ST_OK;
}

/* One release job at a time: it writes whatever closes gathered, in one statement per
 * group, and looks again until none is left, so a storm of closes costs a few
 * statements rather than one per device. A failure puts the group back for the next
 * round (the database is away; nothing is lost meanwhile: the devices stay held). */
static void offline_job(struct scouts *s, void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct scouts_offline *o = s->offline;
        size_t n = s->noffline, cap = s->capoffline;
        s->offline = NULL;
        s->noffline = s->capoffline = 0;
        if (n == 0)
            s->offline_running = false;
        pthread_mutex_unlock(&s->mu);
        if (n == 0) {
            free(o);
            return;
        }
        int rc = offline_write(s, o, n);
        if (rc == ST_OK) {
            free(o);
            continue;
        }
        log_msg(s->lg, LOG_WARN, "device release failed; retrying", "error", st_strerror(rc), NULL);
        /* back in front of what gathered meanwhile (written again is harmless: a device
         * already released no longer matches). Out of memory, this group is dropped and
         * its devices stay held until they say hello again or this instance stops. */
        pthread_mutex_lock(&s->mu);
        if (s->noffline) {
            struct scouts_offline *m = realloc(o, (n + s->noffline) * sizeof(*o));
            if (m) {
                memcpy(m + n, s->offline, s->noffline * sizeof(*o));
                n += s->noffline;
                cap = n;
                o = m;
            } else {
                free(o);
                o = NULL;
            }
        }
        if (o) {
            free(s->offline);
            s->offline = o;
            s->noffline = n;
            s->capoffline = cap;
        }
        s->offline_running = false;
        pthread_mutex_unlock(&s->mu);
        return;
    }
}

void scouts_offline_flush(struct scouts *s)
{
    pthread_mutex_lock(&s->mu);
    bool go = s->noffline > 0 && !s->offline_running;
    if (go)
        s->offline_running = true;
    pthread_mutex_unlock(&s->mu);
    if (go && submit(s, offline_job, NULL, true) != 0) {
        pthread_mutex_lock(&s->mu);
        s->offline_running = false;
        pthread_mutex_unlock(&s->mu);
    }
}

/* A hello of the device (of user) wrote seen, and no session of it is linked for it
 * (s->mu held): other sessions of the device here take seen, and with none the device
 * is released again. */
static void hello_unused_locked(struct scouts *s, const char *user, const char *device_id,
                                long long seen)
{
    struct scouts_user *u = user_find_locked(s, user);
    bool other = false;
    for (struct scouts_sess *x = u ? u->sessions : NULL; x; x = x->user_next) {
        if (strcmp(x->device_id, device_id) == 0) {
            other = true;
            if (x->seen < seen)
                x->seen = seen;
        }
    }
    if (!other)
        offline_push_locked(s, device_id, seen);
}

/* ------------------------------------------------------------ device_hello */

/* A hello waiting for its token check (in scouts->hello_head). */
struct scouts_hello_wait {
    struct scouts_hello_wait *next; /* in the pending list */
    uint64_t sid;
    char device_id[SCOUTS_ID_LEN + 1];
    char token[TOKEN_MAX + 1];
    struct log_scope scope;            /* from the hello's traceparent: every line of the check */
    char traceparent[56];              /* echoed in hello_ok when valid */
    char client[CLIENT_FIELD_MAX + 1]; /* "unknown" when the hello named none */
    char client_version[CLIENT_FIELD_MAX + 1]; /* empty unless given and valid */
};

/* A client name or version: 1 to CLIENT_FIELD_MAX of [A-Za-z0-9._+@/-], so what is
 * logged is a library's name, never free text. */
static bool client_field_ok(const char *v)
{
    size_t n = v ? strlen(v) : 0;
    if (n == 0 || n > CLIENT_FIELD_MAX)
        return false;
    for (const char *p = v; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._+@/-", c)))
            return false;
    }
    return true;
}

/* What the log line on connect says of the optional "client": {"name": ..., "version":
 * ...} of a device_hello. Never a reason to refuse the hello: clients older than the
 * field sent other shapes, which steward ignored. Only checked values are logged: a name
 * that is missing or not one is "invalid", a version that is not one is left out. */
static void hello_client(const json_t *frame, struct scouts_hello_wait *a)
{
    const json_t *c = json_object_get(frame, "client");
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *version = json_string_value(json_object_get(c, "version"));
    snprintf(a->client, sizeof(a->client), "%s",
             !c                      ? "unknown"
             : client_field_ok(name) ? name
                                     : "invalid");
    snprintf(a->client_version, sizeof(a->client_version), "%s",
             c && client_field_ok(version) ? version : "");
}

/* Counts a refused hello and warns about it, at most once a second (with how many
 * were left out meanwhile), so that a token-guessing storm is seen without flooding
 * the log. device is the id the client sent when it has the form of one, else NULL;
 * the token never appears. */
static void hello_refused(struct scouts *s, enum metrics_counter c, const char *reason,
                          const char *device)
{
    metrics_count(s->metrics, c, 1);
    long long now = (long long)clock_now_ms();
    long long last = atomic_load(&s->hello_warn_ms);
    if ((last != 0 && now - last < 1000) ||
        !atomic_compare_exchange_strong(&s->hello_warn_ms, &last, now)) {
        atomic_fetch_add(&s->hello_warn_skipped, 1);
        return;
    }
    struct log_line l;
    log_begin(&l, s->lg, LOG_WARN, "device hello rejected");
    log_str(&l, "reason", reason);
    if (device)
        log_str(&l, "device_id", device);
    log_int(&l, "suppressed", atomic_exchange(&s->hello_warn_skipped, 0));
    log_end(&l);
}

static void reject_hello(struct scouts *s, uint64_t sid)
{
    send_error(s, sid, "unauthorized", NULL);
    ws_close(s->ws, sid, WS_CLOSE_UNAUTHORIZED, "unauthorized");
}

/* Answers one hello of a checked batch (rc: the batch statement's outcome, ok, user and
 * seen: this hello's); returns true when its session went live, so its user is owed a pass. */
static bool hello_answer(struct scouts *s, struct scouts_hello_wait *a, int rc, bool ok,
                         const char *user, long long seen)
{
    if (rc == ST_OK && !ok) {
        hello_refused(s, MC_WS_HELLO_REJECTED_TOKEN, "bad_token", a->device_id);
        reject_hello(s, a->sid);
        return false;
    }
    if (rc != ST_OK) {
        hello_refused(s, MC_WS_HELLO_REJECTED_BUSY, "unavailable", a->device_id);
        send_error(s, a->sid, "unavailable", NULL);
        ws_close(s->ws, a->sid, WS_CLOSE_TRY_AGAIN, "try again later");
        return false;
    }
    /* Linked before ws_session_accept, not live yet (no pass sends to it before its
     * hello_ok); the closed callback only fires for accepted sessions, so one that dies
     * in between is unlinked below. */
    pthread_mutex_lock(&s->mu);
    if (sess_find_locked(s, a->sid)) {
        /* a second hello on the same session while the first was checked: it wrote
         * presence all the same */
        hello_unused_locked(s, user, a->device_id, seen);
        pthread_mutex_unlock(&s->mu);
        return false;
    }
    struct scouts_user *u = user_get_locked(s, user);
    struct scouts_sess *x = u ? calloc(1, sizeof(*x)) : NULL;
    if (!x) {
        if (u)
            user_maybe_free_locked(s, u);
        hello_unused_locked(s, user, a->device_id, seen);
        pthread_mutex_unlock(&s->mu);
        send_error(s, a->sid, "unavailable", NULL);
        ws_close(s->ws, a->sid, WS_CLOSE_TRY_AGAIN, "out of memory");
        return false;
    }
    x->sid = a->sid;
    snprintf(x->device_id, sizeof(x->device_id), "%s", a->device_id);
    x->seen = seen;
    x->user = u;
    x->user_next = u->sessions;
    u->sessions = x;
    hash_insert(&s->by_sid, &x->by_sid, hash_u64(a->sid));
    pthread_mutex_unlock(&s->mu);

    if (ws_session_accept(s->ws, a->sid, x) != 0) {
        /* gone or closing: x never became the session's tag, so it is still ours */
        pthread_mutex_lock(&s->mu);
        if (sess_remove_locked(s, x))
            offline_push_locked(s, a->device_id, seen);
        pthread_mutex_unlock(&s->mu);
        return false;
    }
    /* x is the session's now: on_closed may free it at any moment, so it is found
     * again by sid below and not used directly */
    x = NULL;
    char sess_id[48], now[32];
    snprintf(sess_id, sizeof(sess_id), "%s-%llu", s->instance, (unsigned long long)a->sid);
    jtime_format(jtime_now_us(), now);
    json_t *okf = json_pack("{s:s, s:s, s:s, s:i}", "type", "hello_ok", "session_id", sess_id,
                            "server_time", now, "heartbeat_s", s->set.ws_heartbeat_s);
    if (okf && a->traceparent[0])
        json_object_set_new(okf, "traceparent", json_string(a->traceparent));
    send_json(s, a->sid, okf, MC_WS_FRAMES_OUT_HELLO_OK);
    struct log_line l;
    log_begin(&l, s->lg, LOG_INFO, "device connected");
    log_str(&l, "device_id", a->device_id);
    log_int(&l, "session", (long long)a->sid);
    log_str(&l, "session_id", sess_id);
    log_str(&l, "client", a->client);
    if (a->client_version[0])
        log_str(&l, "client_version", a->client_version);
    log_end(&l);
    pthread_mutex_lock(&s->mu);
    struct scouts_sess *mine = sess_find_locked(s, a->sid);
    if (mine)
        mine->live = true;
    pthread_mutex_unlock(&s->mu);
    return mine != NULL;
}

static void hellos_free(struct scouts_hello_wait *list)
{
    while (list) {
        struct scouts_hello_wait *next = list->next;
        explicit_bzero(list->token, sizeof(list->token));
        free(list);
        list = next;
    }
}

/* Takes up to ws_hello_batch waiting hellos (oldest first); when none is left the
 * draining job ends (returns NULL). */
static struct scouts_hello_wait *hellos_take(struct scouts *s, size_t *n)
{
    size_t max = s->set.ws_hello_batch > 0 ? (size_t)s->set.ws_hello_batch : 1;
    *n = 0;
    pthread_mutex_lock(&s->hmu);
    struct scouts_hello_wait *head = s->hello_head, *last = NULL;
    for (struct scouts_hello_wait *a = head; a && *n < max; a = a->next) {
        last = a;
        (*n)++;
    }
    if (last) {
        s->hello_head = last->next;
        if (!s->hello_head)
            s->hello_tail = NULL;
        last->next = NULL;
    } else {
        s->hello_draining = false;
    }
    pthread_mutex_unlock(&s->hmu);
    return head;
}

/* Every waiting hello is answered 1013 (no job could be started to check them). */
static void hellos_refuse_all(struct scouts *s)
{
    pthread_mutex_lock(&s->hmu);
    struct scouts_hello_wait *list = s->hello_head;
    s->hello_head = s->hello_tail = NULL;
    s->hello_draining = false;
    pthread_mutex_unlock(&s->hmu);
    for (struct scouts_hello_wait *a = list; a; a = a->next)
        ws_close(s->ws, a->sid, WS_CLOSE_TRY_AGAIN, "busy");
    hellos_free(list);
}

static void hello_drain_job(struct scouts *s, void *arg);

/* Called when a batch's statement was answered: hellos that arrived meanwhile go to a
 * job of their own, whose statement then runs while this job answers its batch and runs
 * the batch's passes. Returns true when this job has to drain them itself (no job could
 * be started), false when it stops after its batch. */
static bool hellos_hand_over(struct scouts *s)
{
    pthread_mutex_lock(&s->hmu);
    bool more = s->hello_head != NULL;
    if (!more)
        s->hello_draining = false;
    pthread_mutex_unlock(&s->hmu);
    /* still draining when more: nobody else submits meanwhile */
    return more && submit_how(s, hello_drain_job, NULL, false, JOB_URGENT) != 0;
}

/* Adds user to the n distinct users in users (cap entries) unless there. */
static void user_once(char **users, size_t *n, char *user)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(users[i], user) == 0)
            return;
    users[(*n)++] = user;
}

/* One batch: every token in one statement, then each hello answered as alone (under its
 * own trace scope), then one grouped pass for the users whose sessions went live. Returns
 * hellos_hand_over's answer, asked as soon as the statement was answered. */
static bool hello_batch(struct scouts *s, struct scouts_hello_wait *batch, size_t n)
{
    struct scouts_hello_check *h = calloc(n, sizeof(*h));
    char **users = calloc(n, sizeof(*users));
    int rc = ST_ENOMEM;
    if (h && users) {
        size_t i = 0;
        for (struct scouts_hello_wait *a = batch; a; a = a->next, i++) {
            h[i].device_id = a->device_id;
            h[i].token = a->token;
        }
        /* the devices count online only once this instance's lease row exists: written
         * by the presence tick, and here until it was */
        if (!atomic_load(&s->lease_renewed))
            scouts_lease_renew(s);
        rc = scouts_devices_hello(s, h, n);
    }
    bool drain_more = hellos_hand_over(s);
    size_t i = 0, nu = 0;
    for (struct scouts_hello_wait *a = batch; a; a = a->next, i++) {
        explicit_bzero(a->token, sizeof(a->token));
        const struct log_scope *prev = log_scope_set(&a->scope);
        bool ok = h && h[i].ok;
        if (hello_answer(s, a, rc, ok, ok ? h[i].user : "", ok ? h[i].seen : 0) && users)
            user_once(users, &nu, h[i].user);
        log_scope_set(prev);
    }
    /* their first passes, grouped: users whose pass is running get it rerun instead */
    size_t m = 0;
    for (size_t k = 0; k < nu; k++)
        if (claim(s, users[k]))
            users[m++] = users[k];
    if (m > 0)
        pass_group(s, users, m);
    free(users);
    if (h)
        for (size_t k = 0; k < n; k++)
            explicit_bzero(h[k].hash, sizeof(h[k].hash));
    free(h);
    return drain_more;
}

/* Drains the waiting hellos, a batch at a time; at most one such job runs. */
static void hello_drain_job(struct scouts *s, void *arg)
{
    (void)arg;
    for (;;) {
        size_t n;
        struct scouts_hello_wait *batch = hellos_take(s, &n);
        if (!batch)
            return;
        bool more = hello_batch(s, batch, n);
        hellos_free(batch);
        if (!more)
            return;
    }
}

static void on_hello(void *ctx, struct ws_server *ws, uint64_t sid, bool authed, json_t *frame)
{
    struct scouts *s = ctx;
    (void)ws;
    if (atomic_load(&s->stopping))
        return;
    if (authed) {
        send_error(s, sid, "already_authenticated", NULL);
        return;
    }
    const char *device = json_string_value(json_object_get(frame, "device_id"));
    const char *token = json_string_value(json_object_get(frame, "token"));
    if (!device || !token || !scouts_uuid_valid(device) || strlen(token) > TOKEN_MAX) {
        hello_refused(s, MC_WS_HELLO_REJECTED_MALFORMED, "malformed",
                      scouts_uuid_valid(device) ? device : NULL);
        reject_hello(s, sid);
        return;
    }
    struct scouts_hello_wait *a = malloc(sizeof(*a));
    if (!a) {
        reject_hello(s, sid);
        return;
    }
    hello_client(frame, a);
    a->sid = sid;
    snprintf(a->device_id, sizeof(a->device_id), "%s", device);
    /* the database's spelling: the session's device id is compared with ids the
     * database hands back (a deletion's notification, the presence refresh) */
    scouts_uuid_canon(a->device_id);
    snprintf(a->token, sizeof(a->token), "%s", token);
    /* W3C Trace Context: a malformed value is ignored, as a header would be */
    const char *tp = json_string_value(json_object_get(frame, "traceparent"));
    if (!tp || log_traceparent_parse(tp, a->scope.trace_id, a->traceparent) != 0) {
        a->scope.trace_id[0] = '\0';
        a->traceparent[0] = '\0';
    }
    /* Queued for the draining job, which checks the tokens of every hello waiting in one
     * statement; a hello that finds no job draining starts one, ahead of other sessions'
     * acks and passes (a flood elsewhere never delays it). */
    a->next = NULL;
    pthread_mutex_lock(&s->hmu);
    if (s->hello_tail)
        s->hello_tail->next = a;
    else
        s->hello_head = a;
    s->hello_tail = a;
    bool start = !s->hello_draining;
    s->hello_draining = true;
    pthread_mutex_unlock(&s->hmu);
    if (start && submit_how(s, hello_drain_job, NULL, false, JOB_URGENT) != 0)
        hellos_refuse_all(s);
}

/* ------------------------------------------------------------ acks */

/* An ack waiting for its statement (in scouts->ack_head). */
struct scouts_ack_wait {
    struct scouts_ack_wait *next; /* in the pending list */
    uint64_t sid;
    char pid[SCOUTS_ID_LEN + 1];
    char device_id[SCOUTS_ID_LEN + 1];
    char user_id[SCOUTS_USER_MAX * 4 + 1];
};

/* The ack of session sid is answered (or dropped): one less in flight. */
static void ack_done(struct scouts *s, uint64_t sid)
{
    pthread_mutex_lock(&s->mu);
    struct scouts_sess *x = sess_find_locked(s, sid);
    if (x && x->acks_inflight > 0)
        x->acks_inflight--;
    pthread_mutex_unlock(&s->mu);
}

static void acks_free(struct scouts_ack_wait *list)
{
    while (list) {
        struct scouts_ack_wait *next = list->next;
        free(list);
        list = next;
    }
}

/* Takes up to ws_hello_batch waiting acks (oldest first); when none is left the
 * draining job ends (returns NULL). */
static struct scouts_ack_wait *acks_take(struct scouts *s, size_t *n)
{
    size_t max = s->set.ws_hello_batch > 0 ? (size_t)s->set.ws_hello_batch : 1;
    *n = 0;
    pthread_mutex_lock(&s->hmu);
    struct scouts_ack_wait *head = s->ack_head, *last = NULL;
    for (struct scouts_ack_wait *a = head; a && *n < max; a = a->next) {
        last = a;
        (*n)++;
    }
    if (last) {
        s->ack_head = last->next;
        if (!s->ack_head)
            s->ack_tail = NULL;
        last->next = NULL;
        s->nack -= *n;
    } else {
        s->ack_draining = false;
    }
    pthread_mutex_unlock(&s->hmu);
    return head;
}

static void ack_drain_job(struct scouts *s, void *arg);

/* Called once a batch is answered: acks that arrived meanwhile go to a job of their own,
 * whose statement then runs while this job runs the batch's passes. Returns true when
 * this job has to drain them itself (no job could be started), false when it stops after
 * its batch. Only now, so that the acks of one session are answered in arrival order. */
static bool acks_hand_over(struct scouts *s)
{
    pthread_mutex_lock(&s->hmu);
    bool more = s->ack_head != NULL;
    if (!more)
        s->ack_draining = false;
    pthread_mutex_unlock(&s->hmu);
    /* still draining when more: nobody else submits meanwhile */
    return more && submit_how(s, ack_drain_job, NULL, false, JOB_BOUNDED) != 0;
}

/* One batch: every ack in one statement, then each answered as alone, in arrival order
 * (ack_ok, or not_found, or unavailable for all when the database is away; a flip tells
 * the user's other devices here), then one grouped pass for the users whose windows were
 * full. Returns acks_hand_over's answer. */
static bool ack_batch(struct scouts *s, struct scouts_ack_wait *batch, size_t n)
{
    struct scouts_ack_item *items = calloc(n, sizeof(*items));
    char **users = calloc(n, sizeof(*users));
    int rc = ST_ENOMEM;
    if (items) {
        size_t i = 0;
        for (struct scouts_ack_wait *a = batch; a; a = a->next, i++)
            items[i] = (struct scouts_ack_item){a->pid, a->user_id, a->device_id, false, false};
        rc = scouts_acks(s, items, n);
    }
    size_t i = 0, nu = 0;
    for (struct scouts_ack_wait *a = batch; a; a = a->next, i++) {
        ack_done(s, a->sid);
        if (rc != ST_OK) {
            /* nothing changed; the device acks again when the proposal comes back */
            send_error(s, a->sid, "unavailable", a->pid);
            continue;
        }
        if (!items[i].found) {
            send_error(s, a->sid, "not_found", a->pid);
            continue;
        }
        send_json(s, a->sid, json_pack("{s:s, s:s}", "type", "ack_ok", "proposal_id", a->pid),
                  MC_WS_FRAMES_OUT_ACK_OK);
        if (items[i].changed && resolved(s, a->user_id, a->pid, a->device_id) && users)
            user_once(users, &nu, a->user_id);
    }
    free(items);
    bool drain_more = acks_hand_over(s);
    /* the room the acks made, filled in one grouped pass: users whose pass is running
     * get it rerun instead */
    size_t m = 0;
    for (size_t k = 0; k < nu; k++)
        if (claim(s, users[k]))
            users[m++] = users[k];
    if (m > 0)
        pass_group(s, users, m);
    free(users);
    return drain_more;
}

/* Drains the waiting acks, a batch at a time; at most one such job runs. */
static void ack_drain_job(struct scouts *s, void *arg)
{
    (void)arg;
    for (;;) {
        size_t n;
        struct scouts_ack_wait *batch = acks_take(s, &n);
        if (!batch)
            return;
        bool more = ack_batch(s, batch, n);
        acks_free(batch);
        if (!more)
            return;
    }
}

/* The queue is full: session sid's ack is refused and the session closed 1013. */
static void ack_refused(struct scouts *s, uint64_t sid)
{
    metrics_count(s->metrics, MC_WS_QUEUE_FULL, 1);
    send_error(s, sid, "unavailable", NULL);
    ws_close(s->ws, sid, WS_CLOSE_TRY_AGAIN, "busy");
}

static void on_ack(void *ctx, struct ws_server *ws, uint64_t sid, bool authed, json_t *frame)
{
    struct scouts *s = ctx;
    (void)ws;
    (void)authed;
    if (atomic_load(&s->stopping))
        return;
    json_t *pv = json_object_get(frame, "proposal_id");
    const char *pid = json_string_value(pv);
    if (!pid) {
        send_error(s, sid, "bad_frame", NULL);
        return;
    }
    if (!scouts_uuid_valid(pid)) {
        /* cannot name a proposal: unknown, answered without a database trip */
        char shown[SCOUTS_ID_LEN * 4 + 1];
        snprintf(shown, sizeof(shown), "%s", pid);
        send_error(s, sid, "not_found", shown);
        return;
    }
    struct scouts_ack_wait *a = malloc(sizeof(*a));
    if (!a)
        return;
    a->next = NULL;
    a->sid = sid;
    snprintf(a->pid, sizeof(a->pid), "%s", pid);
    scouts_uuid_canon(a->pid);
    pthread_mutex_lock(&s->mu);
    struct scouts_sess *x = sess_find_locked(s, sid);
    bool over = false;
    if (x) {
        snprintf(a->device_id, sizeof(a->device_id), "%s", x->device_id);
        snprintf(a->user_id, sizeof(a->user_id), "%s", x->user->user_id);
        over = s->set.ws_max_frames_in_flight > 0 &&
               x->acks_inflight >= s->set.ws_max_frames_in_flight;
        if (!over)
            x->acks_inflight++;
    }
    pthread_mutex_unlock(&s->mu);
    if (!x || over) {
        free(a);
        if (over) {
            /* more unanswered acks than any device needs: a flood, cut off before it
             * takes the workers from other sessions */
            metrics_count(s->metrics, MC_WS_SESSIONS_LIMITED, 1);
            ws_close(s->ws, sid, WS_CLOSE_POLICY, "too many frames in flight");
        }
        return;
    }
    /* Queued for the draining job, which acks every ack waiting in one statement; an ack
     * that finds no job draining starts one, behind hellos. The acks waiting count
     * against STEWARD_WORKER_QUEUE_MAX as the jobs of single acks did. */
    int max = s->set.worker_queue_max;
    pthread_mutex_lock(&s->hmu);
    bool full = max > 0 && s->nack >= (size_t)max;
    bool start = false;
    if (!full) {
        if (s->ack_tail)
            s->ack_tail->next = a;
        else
            s->ack_head = a;
        s->ack_tail = a;
        s->nack++;
        start = !s->ack_draining;
        s->ack_draining = true;
    }
    pthread_mutex_unlock(&s->hmu);
    if (full) {
        free(a);
        ack_done(s, sid);
        ack_refused(s, sid);
        return;
    }
    if (!start)
        return;
    int rc = submit_how(s, ack_drain_job, NULL, false, JOB_BOUNDED);
    if (rc == 0)
        return;
    /* no job: nothing drains, so every ack waiting (this one and any that came since it
     * was queued) is refused */
    pthread_mutex_lock(&s->hmu);
    struct scouts_ack_wait *list = s->ack_head;
    s->ack_head = s->ack_tail = NULL;
    s->nack = 0;
    s->ack_draining = false;
    pthread_mutex_unlock(&s->hmu);
    for (struct scouts_ack_wait *w = list; w; w = w->next) {
        ack_done(s, w->sid);
        if (rc == -2)
            ack_refused(s, w->sid);
    }
    acks_free(list);
}

/* ------------------------------------------------------------ closes */

/* Service thread: tag is the session's struct scouts_sess (see hello_answer); the sid is
 * already unknown to ws, so nothing sends to it any more. */
static void on_closed(void *ctx, struct ws_server *ws, uint64_t sid, void *tag)
{
    struct scouts *s = ctx;
    struct scouts_sess *x = tag;
    (void)ws;
    (void)sid;
    char device_id[SCOUTS_ID_LEN + 1];
    pthread_mutex_lock(&s->mu);
    snprintf(device_id, sizeof(device_id), "%s", x->device_id);
    long long seen = x->seen;
    bool last = sess_remove_locked(s, x);
    /* stopping: the shutdown releases every device held here at once */
    if (last && !atomic_load(&s->stopping))
        offline_push_locked(s, device_id, seen);
    pthread_mutex_unlock(&s->mu);
}

int scouts_ws_register(struct ws_server *ws, struct scouts *s)
{
    s->ws = ws;
    int rc = 0;
    rc |= ws_server_on(ws, "device_hello", true, on_hello, s);
    rc |= ws_server_on(ws, "scout_proposal_ack", false, on_ack, s);
    ws_server_on_closed(ws, on_closed, s);
    return rc;
}

void scouts_sessions_free(struct scouts *s)
{
    /* hellos and acks no job took (the workers stopped first) */
    pthread_mutex_lock(&s->hmu);
    struct scouts_hello_wait *waiting = s->hello_head;
    s->hello_head = s->hello_tail = NULL;
    pthread_mutex_unlock(&s->hmu);
    hellos_free(waiting);
    pthread_mutex_lock(&s->hmu);
    struct scouts_ack_wait *acks = s->ack_head;
    s->ack_head = s->ack_tail = NULL;
    s->nack = 0;
    pthread_mutex_unlock(&s->hmu);
    acks_free(acks);
    pthread_mutex_lock(&s->mu);
    struct hash_iter it = hash_iter(&s->by_sid);
    for (struct hash_node *h; (h = hash_iter_next(&it)) != NULL;)
        sess_remove_locked(s, hash_entry(h, struct scouts_sess, by_sid));
    it = hash_iter(&s->by_user); /* users a pass still held */
    for (struct hash_node *h; (h = hash_iter_next(&it)) != NULL;)
        user_free_locked(s, hash_entry(h, struct scouts_user, by_id));
    pthread_mutex_unlock(&s->mu);
}
