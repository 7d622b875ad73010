#include "steward/dbpipe.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/clock.h"
#include "steward/err.h"

#define LANE_LINGER_MS 2  /* an idle lane connection is kept this long */
#define LANE_STALL_MS 20  /* an answer this late: new statements go to another connection */
#define LANE_GROUP_MAX 32 /* writes sharing one Sync (one transaction) */
/* Reads sharing one Sync. PostgreSQL sends its answers at each Sync, so with smaller
 * groups the loop answers the first reads of a round while the backend still runs the
 * next ones: in interleaved bench rounds 8 gave 2-12% more reads per second than 32. */
#define LANE_READ_GROUP_MAX 8
/* Connections a lane runs groups of writes on at once, each one group at a time: loops
 * are one per two CPUs, so this is one backend per CPU. */
#define LANE_WRITE_CONNS 2
#define LANE_CONNS DBPIPE_LANE_FDS

/* Jobs in order, linked through their next field. */
struct job_fifo {
    struct dbpipe_job *head, *tail;
};

/* One connection of a lane and the statements in flight on it, oldest first. */
struct lane_conn {
    struct pool_conn *c;
    struct job_fifo flight;
    int nflight;
    struct job_fifo held; /* answered writes of the group in flight, until its Sync */
    bool writing;         /* a group of writes is in flight */
    bool out_pending;     /* libpq still holds data to write */
    int64_t idle_since;   /* holding c with nothing in flight since */
};

/* A database lane: the pipe's share of one event-loop thread. Jobs submitted on that
 * thread queue here without any atomic operation; the loop sends them after each round
 * of its own work and reads results when a connection's socket has input, so the
 * request never changes threads. New statements go to the current connection; when its
 * oldest answer is LANE_STALL_MS late (a row lock, a stuck backend) the lane takes
 * another free connection for what follows, so one blocked statement holds up only
 * what was pipelined behind it. Everything but the counters is touched only by the
 * owning thread. */
struct dbpipe_lane {
    struct dbpipe *p;
    struct job_fifo queue; /* submitted, not sent yet */
    struct lane_conn conns[LANE_CONNS];
    int cur;                /* the connection new statements go to, -1 for none */
    int held;               /* connections held */
    int polled[LANE_CONNS]; /* conns[] index of each descriptor the last flush gave */
    int npolled;
    _Atomic uint64_t jobs;
    _Atomic uint64_t batches;
    _Atomic uint64_t regrouped;
};

/* The lane of the calling thread, if it is an event-loop thread that attached one. */
static _Thread_local struct dbpipe_lane *lane_here;

struct dbpipe {
    struct pool *pool;
    const struct logger *lg;
    int max_wait_ms;
    int nthreads;
    pthread_t *threads;

    /* Submitted jobs, newest first; a database thread takes the whole stack at once. */
    _Atomic(struct dbpipe_job *) head;
    atomic_bool stopping;

    /* Only a thread going to sleep and a submitter that sees a sleeper take this. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int sleepers;

    atomic_uint_fast64_t jobs;
    atomic_uint_fast64_t batches;
    atomic_uint_fast64_t expired;

    int max_lanes;
    atomic_int nlanes; /* lanes handed out (slots of lanes[] in use) */
    /* Connections lanes hold beyond their first (taken while one stalls), in all, and
     * the bound on them: lanes never hold more than 3/4 of the pool, so a quarter is
     * always left to everything else. */
    atomic_int extra_held;
    int extra_max;
    struct dbpipe_lane *lanes;
};

static void fifo_push(struct job_fifo *f, struct dbpipe_job *job)
{
    job->next = NULL;
    if (f->tail)
        f->tail->next = job;
    else
        f->head = job;
    f->tail = job;
}

static struct dbpipe_job *fifo_pop(struct job_fifo *f)
{
    struct dbpipe_job *job = f->head;
    if (job) {
        f->head = job->next;
        if (!f->head)
            f->tail = NULL;
    }
    return job;
}

/* Puts the jobs of front (in their order) ahead of those of f; front is left as is. */
static void fifo_prepend(struct job_fifo *f, const struct job_fifo *front)
{
    if (!front->head)
        return;
    front->tail->next = f->head;
    if (!f->head)
        f->tail = front->tail;
    f->head = front->head;
}

/* Empties f, returning its jobs as a list. */
static struct dbpipe_job *fifo_take(struct job_fifo *f)
{
    struct dbpipe_job *list = f->head;
    f->head = f->tail = NULL;
    return list;
}

int dbpipe_submit(struct dbpipe *p, struct dbpipe_job *job)
{
    if (atomic_load_explicit(&p->stopping, memory_order_relaxed))
        return ST_EUNAVAIL;
    job->queued_us = clock_now_us();
    job->sync_after = false;
    job->alone = false;
    job->in_group = false;
    job->held = NULL;
    struct dbpipe_lane *ln = lane_here;
    if (ln && ln->p == p) {
        fifo_push(&ln->queue, job);
        return ST_OK;
    }
    struct dbpipe_job *old = atomic_load_explicit(&p->head, memory_order_relaxed);
    do {
        job->next = old;
    } while (!atomic_compare_exchange_weak(&p->head, &old, job));
    /* Sequentially consistent push then look, against the sleeper's register then look:
     * either the sleeper sees this job or this sees the sleeper. */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return ST_OK;
}

/* Takes every queued job, oldest first. */
static struct dbpipe_job *take_all(struct dbpipe *p)
{
    struct dbpipe_job *list = atomic_exchange(&p->head, NULL);
    struct dbpipe_job *fifo = NULL;
    while (list) {
        struct dbpipe_job *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    return fifo;
}

static void complete(struct dbpipe_job *job, PGresult *r, int rc)
{
    job->done(job, r, rc);
}

/* Completes every job of list as unavailable, dropping a result one still held. */
static void complete_unavailable(struct dbpipe_job *list)
{
    while (list) {
        struct dbpipe_job *next = list->next;
        PQclear(list->held);
        list->held = NULL;
        complete(list, NULL, ST_EUNAVAIL);
        list = next;
    }
}

/* Runs up to POOL_BATCH_MAX jobs (already unlinked into jobs[]) in one pipeline. */
static void run_batch(struct dbpipe *p, struct dbpipe_job **jobs, size_t n)
{
    const struct db_stmt *st[POOL_BATCH_MAX];
    const char *const *params[POOL_BATCH_MAX];
    PGresult *out[POOL_BATCH_MAX];
    int rcs[POOL_BATCH_MAX];
    int64_t now = clock_now_us();
    size_t live = 0;
    for (size_t i = 0; i < n; i++) {
        if (now - jobs[i]->queued_us > (int64_t)p->max_wait_ms * 1000) {
            atomic_fetch_add_explicit(&p->expired, 1, memory_order_relaxed);
            complete(jobs[i], NULL, ST_EUNAVAIL);
            continue;
        }
        jobs[live++] = jobs[i];
    }
    if (live == 0)
        return;
    struct pool_conn *c;
    if (pool_acquire(p->pool, &c) != ST_OK) {
        for (size_t i = 0; i < live; i++)
            complete(jobs[i], NULL, ST_EUNAVAIL);
        return;
    }
    for (size_t i = 0; i < live; i++) {
        st[i] = jobs[i]->st;
        params[i] = jobs[i]->params;
    }
    pool_exec_batch(c, live, st, params, out);
    for (size_t i = 0; i < live; i++)
        rcs[i] = pool_result_err(c, out[i]);
    pool_release(p->pool, c);
    atomic_fetch_add_explicit(&p->batches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->jobs, live, memory_order_relaxed);
    for (size_t i = 0; i < live; i++)
        complete(jobs[i], out[i], rcs[i]);
}

/* Runs a FIFO list in batches; a job's completion may queue new jobs meanwhile. */
static void run_list(struct dbpipe *p, struct dbpipe_job *list)
{
    struct dbpipe_job *jobs[POOL_BATCH_MAX];
    while (list) {
        size_t n = 0;
        while (list && n < POOL_BATCH_MAX) {
            jobs[n++] = list;
            list = list->next;
        }
        run_batch(p, jobs, n);
    }
}

static void *dbpipe_thread(void *arg)
{
    struct dbpipe *p = arg;
    for (;;) {
        struct dbpipe_job *list = take_all(p);
        if (list) {
            run_list(p, list);
            continue;
        }
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add(&p->sleepers, 1);
        while (!atomic_load(&p->head) && !atomic_load(&p->stopping))
            pthread_cond_wait(&p->cv, &p->mu);
        atomic_fetch_sub(&p->sleepers, 1);
        bool stop = atomic_load(&p->stopping) && !atomic_load(&p->head);
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return NULL;
    }
}

struct dbpipe *dbpipe_new(struct pool *pool, int threads, int lanes, int max_wait_ms,
                          const struct logger *lg)
{
    struct dbpipe *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->threads = calloc((size_t)(threads > 0 ? threads : 1), sizeof(*p->threads));
    p->lanes = calloc((size_t)(lanes > 0 ? lanes : 1), sizeof(*p->lanes));
    if (!p->threads || !p->lanes) {
        free(p->threads);
        free(p->lanes);
        free(p);
        return NULL;
    }
    p->max_lanes = lanes > 0 ? lanes : 0;
    int size = pool_size(pool);
    p->extra_max = size - size / 4 - p->max_lanes;
    p->extra_max = p->extra_max > 0 ? p->extra_max : 0;
    p->pool = pool;
    p->lg = lg;
    p->max_wait_ms = max_wait_ms;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, dbpipe_thread, p) != 0) {
            log_msg(lg, LOG_ERROR, "cannot start a database thread", NULL);
            dbpipe_free(p);
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

void dbpipe_run_inline(struct pool *pool, struct dbpipe_job *job)
{
    struct pool_conn *c;
    if (pool_acquire(pool, &c) != ST_OK) {
        complete(job, NULL, ST_EUNAVAIL);
        return;
    }
    PGresult *r = pool_exec(c, job->st, job->params);
    int rc = pool_result_err(c, r);
    pool_release(pool, c);
    complete(job, r, rc);
}

/* ------------------------------------------------------------------------------------
 * Lanes
 * ---------------------------------------------------------------------------------- */

struct dbpipe_lane *dbpipe_lane_attach(struct dbpipe *p)
{
    if (!p || lane_here)
        return NULL;
    int i = atomic_fetch_add(&p->nlanes, 1);
    if (i >= p->max_lanes) {
        atomic_fetch_sub(&p->nlanes, 1);
        return NULL;
    }
    struct dbpipe_lane *ln = &p->lanes[i];
    ln->p = p;
    ln->cur = -1;
    lane_here = ln;
    return ln;
}

static void lane_count(_Atomic uint64_t *ctr, uint64_t n)
{
    /* only the owning thread writes: a plain read-modify-write is enough */
    atomic_store_explicit(ctr, atomic_load_explicit(ctr, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static int64_t lane_deadline_us(const struct dbpipe_lane *ln)
{
    return ((int64_t)pool_statement_timeout_ms(ln->p->pool) + 5000) * 1000;
}

static void lc_drop(struct dbpipe_lane *ln, struct lane_conn *lc, bool broken)
{
    pool_pipe_end(lc->c, broken);
    pool_release(ln->p->pool, lc->c);
    if (--ln->held >= 1)
        atomic_fetch_sub(&ln->p->extra_held, 1);
    lc->c = NULL;
    lc->out_pending = false;
    lc->writing = false;
    lc->idle_since = 0;
    if (ln->cur >= 0 && &ln->conns[ln->cur] == lc)
        ln->cur = -1;
}

/* The connection failed with statements in flight: they may or may not have run, and
 * none is sent again; each completes as unavailable, and the connection is closed. */
static void lc_break(struct dbpipe_lane *ln, struct lane_conn *lc)
{
    struct dbpipe_job *held = fifo_take(&lc->held); /* their group's commit is unknown */
    struct dbpipe_job *list = fifo_take(&lc->flight);
    lc->nflight = 0;
    lc_drop(ln, lc, true);
    complete_unavailable(held);
    complete_unavailable(list);
}

/* Completes every queued job as unavailable (no connection could be had). */
static void lane_refuse_queue(struct dbpipe_lane *ln)
{
    complete_unavailable(fifo_take(&ln->queue));
}

/* Takes a connection into a free slot: waiting for one when the lane has none, only a
 * free one otherwise. Returns the slot or -1. */
static int lane_take_conn(struct dbpipe_lane *ln, bool may_wait)
{
    int slot = -1;
    for (int i = 0; i < LANE_CONNS && slot < 0; i++)
        if (!ln->conns[i].c)
            slot = i;
    if (slot < 0)
        return -1;
    struct lane_conn *lc = &ln->conns[slot];
    struct dbpipe *p = ln->p;
    if (ln->held >= 1 && atomic_fetch_add(&p->extra_held, 1) >= p->extra_max) {
        atomic_fetch_sub(&p->extra_held, 1);
        return -1;
    }
    int rc = may_wait ? pool_acquire(p->pool, &lc->c) : pool_acquire_within(p->pool, 0, &lc->c);
    if (rc != ST_OK) {
        if (ln->held >= 1)
            atomic_fetch_sub(&p->extra_held, 1);
        lc->c = NULL;
        return -1;
    }
    ln->held++;
    if (!pool_pipe_begin(lc->c)) {
        lc_drop(ln, lc, true);
        return -1;
    }
    return slot;
}

/* Whether lc's oldest statement in flight is LANE_STALL_MS late. */
static bool lc_late(const struct lane_conn *lc, int64_t now)
{
    return lc->nflight > 0 && now - lc->flight.head->queued_us >= LANE_STALL_MS * 1000;
}

/* Picks the connection for new statements: the current one unless it stalls. */
static struct lane_conn *lane_target(struct dbpipe_lane *ln, int64_t now)
{
    if (ln->cur >= 0) {
        struct lane_conn *lc = &ln->conns[ln->cur];
        if (!lc_late(lc, now))
            return lc;
        int slot = lane_take_conn(ln, false);
        if (slot >= 0)
            ln->cur = slot;
        return &ln->conns[ln->cur]; /* none free: queue behind the stalled one */
    }
    for (int i = 0; i < LANE_CONNS; i++) {
        if (ln->conns[i].c && ln->conns[i].nflight == 0) {
            ln->cur = i; /* a lingering idle one */
            return &ln->conns[i];
        }
    }
    int busy = 0;
    for (int i = 0; i < LANE_CONNS; i++)
        busy += ln->conns[i].c != NULL;
    int slot = lane_take_conn(ln, busy == 0);
    if (slot < 0 && busy > 0) {
        /* every held connection is stalled and the pool has none free: the oldest
         * stall ends first (statement_timeout at the latest) */
        for (int i = 0; i < LANE_CONNS && slot < 0; i++)
            if (ln->conns[i].c)
                slot = i;
    }
    ln->cur = slot;
    return slot >= 0 ? &ln->conns[slot] : NULL;
}

/* Whether job may share a Sync with its neighbours: a read whose statement is prepared on
 * the connection already, and that has not failed with a group before. */
static bool groupable(struct lane_conn *lc, const struct dbpipe_job *job)
{
    return job->read_only && !job->alone && pool_pipe_prepared(lc->c, job->st);
}

/* Whether job may share a transaction with its neighbours: a write with a group_st that
 * has not failed with a group before. A group_st not prepared on the connection yet is
 * prepared inside the group; if that fails, the group fails and runs again alone. */
static bool write_groupable(const struct dbpipe_job *job)
{
    return job->group_st && job->lock_key && !job->alone;
}

/* Completes job as unavailable when it waited longer than the pipe allows. */
static bool lane_expired(struct dbpipe *p, struct dbpipe_job *job, int64_t now)
{
    if (now - job->queued_us <= (int64_t)p->max_wait_ms * 1000)
        return false;
    atomic_fetch_add_explicit(&p->expired, 1, memory_order_relaxed);
    complete(job, NULL, ST_EUNAVAIL);
    return true;
}

/* Puts jobs[0..n) back at the head of the lane's queue, in their order. */
static void lane_requeue(struct dbpipe_lane *ln, struct dbpipe_job **jobs, int n)
{
    struct job_fifo back = {0};
    for (int i = 0; i < n; i++)
        fifo_push(&back, jobs[i]);
    fifo_prepend(&ln->queue, &back);
}

/* Sends first and the group_st jobs queued right behind it (up to LANE_GROUP_MAX) as
 * one transaction: one Sync after the last, in ascending order of lock_key, so groups on
 * different lanes take their row locks in the same order and never deadlock. Adds to
 * *sent what went out; returns false when the connection broke (what was not sent is
 * queued again). */
static bool lane_send_writes(struct dbpipe_lane *ln, struct lane_conn *lc, struct dbpipe_job *first,
                             int64_t now, uint64_t *sent)
{
    struct dbpipe_job *w[LANE_GROUP_MAX];
    int n = 0;
    w[n++] = first;
    while (n < LANE_GROUP_MAX && ln->queue.head && write_groupable(ln->queue.head)) {
        struct dbpipe_job *job = fifo_pop(&ln->queue);
        if (!lane_expired(ln->p, job, now))
            w[n++] = job;
    }
    for (int i = 1; i < n; i++) { /* insertion sort: stable, and n is small */
        struct dbpipe_job *job = w[i];
        int k = i;
        for (; k > 0 && strcmp(w[k - 1]->lock_key, job->lock_key) > 0; k--)
            w[k] = w[k - 1];
        w[k] = job;
    }
    for (int i = 0; i < n; i++) {
        struct dbpipe_job *job = w[i];
        job->queued_us = now;
        job->sync_after = i == n - 1;
        job->in_group = n > 1;
        fifo_push(&lc->flight, job);
        lc->nflight++;
        (*sent)++;
        const struct db_stmt *st = n > 1 ? job->group_st : job->st;
        if (!pool_pipe_send(lc->c, st, job->params, &job->prepared_now, job->sync_after)) {
            lane_requeue(ln, w + i + 1, n - i - 1);
            lc_break(ln, lc);
            return false;
        }
    }
    lc->writing = true;
    return true;
}

/* The connection for the next group of writes: lc (the lane's current one) when it has
 * no group of writes in flight; else another held one with none and no late answer;
 * else a free pool connection while fewer than LANE_WRITE_CONNS run groups that are not
 * late (one whose answer is LANE_STALL_MS late, say waiting on a row lock, does not
 * count). NULL: the writes wait in the queue until a group ends, and join the next
 * group. So while one backend runs a group the next one forms and runs on another
 * backend: the writes of one loop use more than one CPU of PostgreSQL, and no
 * connection has more than one group of writes queued. */
static struct lane_conn *lane_write_conn(struct dbpipe_lane *ln, struct lane_conn *lc, int64_t now)
{
    if (!lc->writing)
        return lc;
    int writing = 0;
    struct lane_conn *free_conn = NULL;
    for (int i = 0; i < LANE_CONNS; i++) {
        struct lane_conn *o = &ln->conns[i];
        if (!o->c)
            continue;
        bool late = lc_late(o, now);
        if (o->writing)
            writing += !late;
        else if (!late && !free_conn)
            free_conn = o;
    }
    if (free_conn)
        return free_conn;
    if (writing >= LANE_WRITE_CONNS)
        return NULL;
    int slot = lane_take_conn(ln, false);
    return slot >= 0 ? &ln->conns[slot] : NULL;
}

/* Ends the read group whose last job is *open with its Sync. Returns false when the
 * connection broke. */
static bool lane_close_reads(struct lane_conn *lc, struct dbpipe_job **open, int *grouped)
{
    if (!*open)
        return true;
    (*open)->sync_after = true;
    *open = NULL;
    *grouped = 0;
    return pool_pipe_sync(lc->c);
}

/* Sends every queued job. Consecutive reads (read_only jobs whose statement is prepared
 * on the connection already) share one Sync: libpq writes to the socket at each Sync, and
 * the server answers a group with one write too. Consecutive group_st jobs share one
 * Sync too, and so one transaction (lane_send_writes), on a connection of their own
 * when lc has one in flight (lane_write_conn); when none is free they stay queued.
 * Everything else keeps its own Sync, so it is its own transaction. Returns whether
 * any job was sent or completed. */
static bool lane_send(struct dbpipe_lane *ln)
{
    int64_t now = clock_now_us();
    struct lane_conn *lc = lane_target(ln, now);
    if (!lc) {
        lane_refuse_queue(ln);
        return true;
    }
    uint64_t sent = 0;
    bool expired = false;
    struct job_fifo later = {0}; /* writes waiting for a connection free of writes */
    struct dbpipe_job *job;
    struct dbpipe_job *open = NULL; /* the last job of a read group still without its Sync */
    int grouped = 0;
    while ((job = fifo_pop(&ln->queue))) {
        if (lane_expired(ln->p, job, now)) {
            expired = true;
            continue;
        }
        bool group = groupable(lc, job) && grouped < LANE_READ_GROUP_MAX;
        if (open && !group) {
            if (!lane_close_reads(lc, &open, &grouped)) {
                /* not sent: first in line again, for the next pass on another connection */
                lane_requeue(ln, &job, 1);
                lc_break(ln, lc);
                break;
            }
            group = groupable(lc, job);
        }
        if (!group && write_groupable(job)) {
            struct lane_conn *wc = lane_write_conn(ln, lc, now);
            if (!wc)
                fifo_push(&later, job);
            else if (!lane_send_writes(ln, wc, job, now, &sent))
                break;
            continue;
        }
        job->queued_us = now; /* from here on: when it was sent */
        job->sync_after = !group;
        fifo_push(&lc->flight, job);
        lc->nflight++;
        sent++;
        if (!pool_pipe_send(lc->c, job->st, job->params, &job->prepared_now, !group)) {
            lc_break(ln, lc);
            open = NULL;
            break;
        }
        if (group) {
            open = job;
            grouped++;
        }
    }
    if (open && lc->c && !lane_close_reads(lc, &open, &grouped))
        lc_break(ln, lc);
    fifo_prepend(&ln->queue, &later);
    if (sent) {
        lane_count(&ln->jobs, sent);
        lane_count(&ln->batches, 1);
    }
    return sent > 0 || expired;
}

int dbpipe_lane_flush(struct dbpipe_lane *ln, struct pollfd *fds, int *timeout_ms)
{
    /* A completion of a failed job may queue a follow-up: a few passes at most. */
    for (int pass = 0; ln->queue.head && pass < 4; pass++)
        if (!lane_send(ln))
            break; /* only writes waiting for a connection free of writes */
    int64_t now = clock_now_us();
    int64_t due = -1;
    ln->npolled = 0;
    for (int i = 0; i < LANE_CONNS; i++) {
        struct lane_conn *lc = &ln->conns[i];
        if (!lc->c)
            continue;
        if (lc->nflight > 0 || lc->out_pending) {
            int rc = pool_pipe_flush(lc->c);
            if (rc < 0) {
                lc_break(ln, lc);
                continue;
            }
            lc->out_pending = rc == 1;
        }
        int64_t at;
        short events = POLLIN;
        if (lc->nflight > 0) {
            lc->idle_since = 0;
            at = lc->flight.head->queued_us + lane_deadline_us(ln);
            /* writes wait for a connection free of writes: when this one's group turns
             * late, it stops counting (lane_write_conn), so look again then */
            int64_t late = lc->flight.head->queued_us + LANE_STALL_MS * 1000;
            if (ln->queue.head && lc->writing && late > now && late < at)
                at = late;
            if (lc->out_pending)
                events |= POLLOUT;
        } else {
            if (!lc->idle_since)
                lc->idle_since = now;
            at = lc->idle_since + LANE_LINGER_MS * 1000;
        }
        if (due < 0 || at < due)
            due = at;
        fds[ln->npolled] = (struct pollfd){.fd = pool_pipe_socket(lc->c), .events = events};
        ln->polled[ln->npolled++] = i;
    }
    /* Jobs still queued wait for a connection the pool could not give at once (all busy,
     * or still being opened by the warm-up): nothing on our sockets may ever say when one
     * is free, so look again shortly rather than only when a statement in flight ends. */
    if (ln->queue.head) {
        int64_t again = now + LANE_STALL_MS * 1000;
        if (due < 0 || again < due)
            due = again;
    }
    *timeout_ms = due < 0 ? -1 : due > now ? (int)((due - now + 999) / 1000) : 0;
    return ln->npolled;
}

static bool result_ok(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK;
}

/* The Sync of a group of writes was answered. Committed: each job completes with its
 * result, in the order they ran. Rolled back (one of them failed): each goes to again,
 * to run alone; the one that failed goes last, so that when it waits again (on a row
 * locked elsewhere) the others are not pipelined behind it. Returns how many went to
 * again. */
static uint64_t lc_end_writes(struct lane_conn *lc, struct job_fifo *again)
{
    struct dbpipe_job *list = fifo_take(&lc->held);
    bool failed = false; /* one of them failed: the group was rolled back */
    for (struct dbpipe_job *j = list; j; j = j->next)
        failed |= !result_ok(j->held);
    struct job_fifo culprits = {0};
    uint64_t n = 0;
    while (list) {
        struct dbpipe_job *next = list->next;
        PGresult *r = list->held;
        list->held = NULL;
        list->in_group = false;
        if (failed) {
            bool culprit = PQresultStatus(r) != PGRES_PIPELINE_ABORTED && !result_ok(r);
            PQclear(r);
            list->alone = true;
            fifo_push(culprit ? &culprits : again, list);
            n++;
        } else {
            complete(list, r, ST_OK);
        }
        list = next;
    }
    fifo_prepend(&culprits, again); /* the culprits after the others */
    *again = culprits;
    return n;
}

/* Reads what arrived on one connection and completes the statements it answers. */
static void lc_service(struct dbpipe_lane *ln, struct lane_conn *lc, short revents, int64_t now)
{
    if (lc->nflight == 0) {
        /* Idle: input now can only be the server going away; lingering ends anyway. */
        if (revents || now - lc->idle_since >= LANE_LINGER_MS * 1000)
            lc_drop(ln, lc, false);
        return;
    }
    if ((revents & (POLLIN | POLLERR | POLLHUP)) && !pool_pipe_read(lc->c)) {
        lc_break(ln, lc);
        return;
    }
    struct job_fifo again = {0};
    uint64_t nagain = 0;
    while (lc->nflight > 0) {
        PGresult *r = NULL;
        struct dbpipe_job *head = lc->flight.head;
        int got = pool_pipe_next(lc->c, head->prepared_now, head->sync_after, &r);
        if (got == 0)
            break;
        if (got < 0) {
            lc_break(ln, lc);
            break;
        }
        struct dbpipe_job *job = fifo_pop(&lc->flight);
        lc->nflight--;
        if (job->sync_after && write_groupable(job))
            lc->writing = false; /* the end of a group of writes */
        if (job->in_group) {
            /* a write whose transaction ends at its group's Sync */
            job->held = r;
            fifo_push(&lc->held, job);
            if (job->sync_after)
                nagain += lc_end_writes(lc, &again);
            continue;
        }
        if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED && job->read_only && !job->alone) {
            /* an earlier read of its group failed: this one did not run; run it alone */
            PQclear(r);
            job->alone = true;
            fifo_push(&again, job);
            nagain++;
            continue;
        }
        complete(job, r, pool_result_err(lc->c, r));
    }
    if (again.head) {
        fifo_prepend(&ln->queue, &again); /* first in line, in their order */
        lane_count(&ln->regrouped, nagain);
    }
    if (!lc->c)
        return; /* broken above */
    if (lc->nflight > 0 && now - lc->flight.head->queued_us > lane_deadline_us(ln))
        lc_break(ln, lc); /* silent far past statement_timeout: the connection is gone */
}

void dbpipe_lane_service(struct dbpipe_lane *ln, const struct pollfd *fds, int n)
{
    int64_t now = clock_now_us();
    short rev[LANE_CONNS] = {0};
    for (int i = 0; i < n && i < ln->npolled; i++)
        rev[ln->polled[i]] = fds[i].revents;
    for (int i = 0; i < LANE_CONNS; i++)
        if (ln->conns[i].c)
            lc_service(ln, &ln->conns[i], rev[i], now);
}

bool dbpipe_lane_busy(const struct dbpipe_lane *ln)
{
    if (ln->queue.head)
        return true;
    for (int i = 0; i < LANE_CONNS; i++)
        if (ln->conns[i].nflight > 0)
            return true;
    return false;
}

void dbpipe_lane_detach(struct dbpipe_lane *ln)
{
    if (!ln)
        return;
    /* The loop stops only when the lane is idle; anything left is refused, not lost. */
    lane_refuse_queue(ln);
    for (int i = 0; i < LANE_CONNS; i++) {
        struct lane_conn *lc = &ln->conns[i];
        if (lc->nflight > 0)
            lc_break(ln, lc);
        else if (lc->c)
            lc_drop(ln, lc, false);
    }
    lane_refuse_queue(ln);
    if (lane_here == ln)
        lane_here = NULL;
}

void dbpipe_stats(struct dbpipe *p, struct dbpipe_stats *out)
{
    out->jobs = atomic_load(&p->jobs);
    out->batches = atomic_load(&p->batches);
    out->expired = atomic_load(&p->expired);
    out->regrouped = 0;
    int n = atomic_load(&p->nlanes);
    for (int i = 0; i < n && i < p->max_lanes; i++) {
        out->jobs += atomic_load_explicit(&p->lanes[i].jobs, memory_order_relaxed);
        out->batches += atomic_load_explicit(&p->lanes[i].batches, memory_order_relaxed);
        out->regrouped += atomic_load_explicit(&p->lanes[i].regrouped, memory_order_relaxed);
    }
}

void dbpipe_free(struct dbpipe *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stopping, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* A job pushed between a submitter's check and the threads' exit, or queued by a
     * completion after the last thread left: nobody runs it any more. */
    for (struct dbpipe_job *list = take_all(p); list; list = take_all(p))
        complete_unavailable(list);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p->lanes);
    free(p);
}
