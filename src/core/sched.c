#include "steward/sched.h"

#include <pthread.h>
#include <stdlib.h>

#include "steward/clock.h"

struct slot {
    struct sched *s;
    struct sched_job job;
    int64_t due_us; /* clock_now_us() scale; meaningful while not running */
    bool running;   /* dispatched and not finished */
};

struct sched {
    struct workq *q;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the thread's sleep; also signals "a run finished" */
    bool started, stopping;
    int active;   /* runs dispatched and not finished */
    uint64_t rnd; /* jitter state (xorshift64), guarded by mu */
    pthread_t thread;
    int njobs;
    struct slot slots[SCHED_MAX_JOBS];
};

/* mu held. */
static int64_t jitter_us(struct sched *s, int64_t jitter_ms)
{
    if (jitter_ms <= 0)
        return 0;
    s->rnd ^= s->rnd << 13;
    s->rnd ^= s->rnd >> 7;
    s->rnd ^= s->rnd << 17;
    return (int64_t)(s->rnd % (uint64_t)(jitter_ms * 1000 + 1));
}

int64_t sched_grid_delay_us(int64_t now_wall_us, int64_t period_ms, int64_t offset_ms)
{
    int64_t period = period_ms * 1000;
    int64_t offset = (offset_ms % period_ms) * 1000;
    if (offset < 0)
        offset += period;
    int64_t since = (now_wall_us - offset) % period; /* time since the last grid point */
    if (since < 0)
        since += period;
    return period - since;
}

/* The delay before the next run of a job: one period, or to the next grid point. */
static int64_t next_delay_us(struct sched *s, const struct sched_job *job, int64_t period_ms)
{
    if (job->wall_aligned)
        return sched_grid_delay_us(clock_wall_us(), job->period_ms, job->offset_ms) +
               jitter_us(s, job->jitter_ms);
    return period_ms * 1000 + jitter_us(s, job->jitter_ms);
}

/* mu held: the run of x ended (or never started); the next is due one period on. */
static void finished_locked(struct sched *s, struct slot *x)
{
    x->running = false;
    x->due_us = clock_now_us() + next_delay_us(s, &x->job, x->job.period_ms);
    s->active--;
    pthread_cond_broadcast(&s->cv);
}

static void run_queued(void *arg)
{
    struct slot *x = arg;
    struct sched *s = x->s;
    pthread_mutex_lock(&s->mu);
    bool skip = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (!skip)
        x->job.fn(x->job.ctx);
    pthread_mutex_lock(&s->mu);
    finished_locked(s, x);
    pthread_mutex_unlock(&s->mu);
}

/* mu held. Starts the run of a due job; an inline job runs here with mu released.
 * Returns after dispatching (queued) or running (inline). */
static void dispatch_locked(struct sched *s, struct slot *x)
{
    x->running = true;
    s->active++;
    if (x->job.inline_run) {
        pthread_mutex_unlock(&s->mu);
        x->job.fn(x->job.ctx);
        pthread_mutex_lock(&s->mu);
        finished_locked(s, x);
    } else if (workq_submit(s->q, run_queued, x) != 0) {
        finished_locked(s, x); /* the queue is stopping or out of memory: next period */
    }
}

static void *sched_main(void *arg)
{
    struct sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        int64_t now = clock_now_us();
        int64_t next = INT64_MAX;
        bool ran = false;
        for (int i = 0; i < s->njobs && !s->stopping; i++) {
            struct slot *x = &s->slots[i];
            if (x->running)
                continue;
            if (x->due_us <= now) {
                dispatch_locked(s, x);
                ran = true;
                now = clock_now_us(); /* an inline run took some time */
            } else if (x->due_us < next) {
                next = x->due_us;
            }
        }
        if (ran || s->stopping)
            continue; /* look again: a job may be due again, or one was added */
        if (next == INT64_MAX)
            pthread_cond_wait(&s->cv, &s->mu);
        else
            clock_cond_wait_until(&s->cv, &s->mu, (struct deadline){next});
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

struct sched *sched_new(struct workq *q)
{
    struct sched *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->q = q;
    if (clock_cond_init(&s->cv) != 0) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->rnd = (uint64_t)clock_now_us() ^ (uint64_t)(uintptr_t)s ^ 0x9e3779b97f4a7c15ull;
    if (s->rnd == 0)
        s->rnd = 1;
    return s;
}

int sched_add(struct sched *s, const struct sched_job *job)
{
    if (!job->fn || job->period_ms <= 0 || job->first_ms < 0 || job->jitter_ms < 0 ||
        job->offset_ms < 0 ||
        (!job->inline_run && !s->q))
        return -1;
    pthread_mutex_lock(&s->mu);
    int rc = -1;
    if (!s->stopping && s->njobs < SCHED_MAX_JOBS) {
        struct slot *x = &s->slots[s->njobs++];
        x->s = s;
        x->job = *job;
        x->running = false;
        int64_t first = job->first_ms > 0 ? job->first_ms : job->period_ms;
        x->due_us = clock_now_us() + next_delay_us(s, job, first);
        pthread_cond_broadcast(&s->cv);
        rc = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int sched_start(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->stopping)
        rc = -1;
    else if (!s->started) {
        if (pthread_create(&s->thread, NULL, sched_main, s) != 0)
            rc = -1;
        else
            s->started = true;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void sched_stop(struct sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->cv);
    bool join = s->started;
    s->started = false;
    pthread_mutex_unlock(&s->mu);
    if (join)
        pthread_join(s->thread, NULL);
    pthread_mutex_lock(&s->mu);
    while (s->active > 0)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

void sched_free(struct sched *s)
{
    if (!s)
        return;
    sched_stop(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
