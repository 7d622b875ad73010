#include "steward/pipe.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "steward/err.h"

struct pipe {
    struct pool *pool;
    const struct logger *lg;
    int max_wait_ms;
    int nthreads;
    pthread_t *threads;

    /* Submitted jobs, newest first; a database thread takes the whole stack at once. */
    _Atomic(struct pipe_job *) head;
    atomic_bool stopping;

    /* Only a thread going to sleep and a submitter that sees a sleeper take this. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int sleepers;

    atomic_uint_fast64_t jobs;
    atomic_uint_fast64_t batches;
    atomic_uint_fast64_t expired;
};

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int pipe_submit(struct pipe *p, struct pipe_job *job)
{
    if (atomic_load(&p->stopping))
        return ST_EUNAVAIL;
    job->queued_us = mono_us();
    struct pipe_job *old = atomic_load_explicit(&p->head, memory_order_relaxed);
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
static struct pipe_job *take_all(struct pipe *p)
{
    struct pipe_job *list = atomic_exchange(&p->head, NULL);
    struct pipe_job *fifo = NULL;
    while (list) {
        struct pipe_job *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    return fifo;
}

static void complete(struct pipe_job *job, PGresult *r, int rc)
{
    job->done(job, r, rc);
}

/* Runs up to POOL_BATCH_MAX jobs (already unlinked into jobs[]) in one pipeline. */
static void run_batch(struct pipe *p, struct pipe_job **jobs, size_t n)
{
    const struct db_stmt *st[POOL_BATCH_MAX];
    const char *const *params[POOL_BATCH_MAX];
    PGresult *out[POOL_BATCH_MAX];
    int rcs[POOL_BATCH_MAX];
    int64_t now = mono_us();
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
static void run_list(struct pipe *p, struct pipe_job *list)
{
    struct pipe_job *jobs[POOL_BATCH_MAX];
    while (list) {
        size_t n = 0;
        while (list && n < POOL_BATCH_MAX) {
            jobs[n++] = list;
            list = list->next;
        }
        run_batch(p, jobs, n);
    }
}

static void *pipe_thread(void *arg)
{
    struct pipe *p = arg;
    for (;;) {
        struct pipe_job *list = take_all(p);
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

struct pipe *pipe_new(struct pool *pool, int threads, int max_wait_ms, const struct logger *lg)
{
    struct pipe *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->threads = calloc((size_t)(threads > 0 ? threads : 1), sizeof(*p->threads));
    if (!p->threads) {
        free(p);
        return NULL;
    }
    p->pool = pool;
    p->lg = lg;
    p->max_wait_ms = max_wait_ms;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, pipe_thread, p) != 0) {
            log_msg(lg, LOG_ERROR, "cannot start a database thread", NULL);
            pipe_free(p);
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

void pipe_run_inline(struct pool *pool, struct pipe_job *job)
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

void pipe_stats(struct pipe *p, struct pipe_stats *out)
{
    out->jobs = atomic_load(&p->jobs);
    out->batches = atomic_load(&p->batches);
    out->expired = atomic_load(&p->expired);
}

void pipe_free(struct pipe *p)
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
    for (struct pipe_job *list = take_all(p); list; list = take_all(p)) {
        while (list) {
            struct pipe_job *next = list->next;
            complete(list, NULL, ST_EUNAVAIL);
            list = next;
        }
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}
