/* The worker queue (steward/workq.h) under concurrent submitters: every job runs exactly
 * once, a single worker runs each submitter's jobs in the order they were submitted, and
 * workq_free runs what was still queued, refusing new jobs meanwhile. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "steward/workq.h"
#include "steward/clock.h"
#include "unit.h"

#define SUBMITTERS 8
#define PER_SUBMITTER 2000
#define JOBS (SUBMITTERS * PER_SUBMITTER)

struct job {
    struct shared *sh;
    int submitter;
    int seq;
};

struct shared {
    struct workq *q;
    workq_fn fn;             /* what each job runs */
    pthread_barrier_t start; /* the submitters begin together */
    struct job jobs[JOBS];
    atomic_int runs[JOBS];
    atomic_int total;
    atomic_int refused; /* workq_submit answered -1 */
    /* single-worker runs only (touched by that worker, read after workq_free) */
    int next_seq[SUBMITTERS];
    int out_of_order;
};

static void count_job(void *arg)
{
    struct job *j = arg;
    atomic_fetch_add(&j->sh->runs[j->submitter * PER_SUBMITTER + j->seq], 1);
    atomic_fetch_add(&j->sh->total, 1);
}

static void ordered_job(void *arg)
{
    struct job *j = arg;
    if (j->seq != j->sh->next_seq[j->submitter])
        j->sh->out_of_order++;
    j->sh->next_seq[j->submitter] = j->seq + 1;
    count_job(arg);
}

static void *submitter(void *arg)
{
    struct job *first = arg;
    struct shared *sh = first->sh;
    pthread_barrier_wait(&sh->start);
    for (int i = 0; i < PER_SUBMITTER; i++)
        if (workq_submit(sh->q, sh->fn, first + i) != 0)
            atomic_fetch_add(&sh->refused, 1);
    return NULL;
}

/* SUBMITTERS threads submit PER_SUBMITTER jobs each, all at once. */
static void submit_all(struct shared *sh)
{
    pthread_t t[SUBMITTERS];
    pthread_barrier_init(&sh->start, NULL, SUBMITTERS);
    for (int s = 0; s < SUBMITTERS; s++) {
        for (int i = 0; i < PER_SUBMITTER; i++)
            sh->jobs[s * PER_SUBMITTER + i] = (struct job){sh, s, i};
        pthread_create(&t[s], NULL, submitter, &sh->jobs[s * PER_SUBMITTER]);
    }
    for (int s = 0; s < SUBMITTERS; s++)
        pthread_join(t[s], NULL);
    pthread_barrier_destroy(&sh->start);
}

static int runs_equal(struct shared *sh, int want)
{
    int n = 0;
    for (int i = 0; i < JOBS; i++)
        n += atomic_load(&sh->runs[i]) == want;
    return n;
}

static void exactly_once(void)
{
    static struct shared sh;
    sh.q = workq_new(4);
    CHECK(sh.q != NULL);
    sh.fn = count_job;
    submit_all(&sh);
    CHECK(atomic_load(&sh.refused) == 0);
    /* the workers finish them without workq_free's help */
    for (int i = 0; i < 30000 && atomic_load(&sh.total) < JOBS; i++)
        clock_sleep_us(1000);
    CHECK(atomic_load(&sh.total) == JOBS);
    CHECK(workq_pending(sh.q) == 0);
    workq_free(sh.q);
    CHECK(runs_equal(&sh, 1) == JOBS);
    CHECK(atomic_load(&sh.total) == JOBS);
}

static void fifo_per_submitter(void)
{
    static struct shared sh;
    sh.q = workq_new(1);
    CHECK(sh.q != NULL);
    sh.fn = ordered_job;
    submit_all(&sh);
    workq_free(sh.q);
    CHECK(atomic_load(&sh.refused) == 0);
    CHECK(runs_equal(&sh, 1) == JOBS);
    CHECK(sh.out_of_order == 0);
    int complete = 0;
    for (int s = 0; s < SUBMITTERS; s++)
        complete += sh.next_seq[s] == PER_SUBMITTER;
    CHECK(complete == SUBMITTERS);
}

/* workq_free while the only worker is busy: the jobs queued behind it still run, and a
 * submit after the stop is refused (the caller keeps its argument). */
#define QUEUED 100

struct drain {
    struct workq *q;
    atomic_bool started;
    atomic_bool freeing;
    atomic_int counted;
    int probes_queued; /* accepted while the stop had not begun */
    atomic_int probes_run;
    bool refused;
};

static void drain_count(void *arg)
{
    struct drain *d = arg;
    atomic_fetch_add(&d->counted, 1);
}

static void drain_probe(void *arg)
{
    struct drain *d = arg;
    atomic_fetch_add(&d->probes_run, 1);
}

static void drain_gate(void *arg)
{
    struct drain *d = arg;
    atomic_store(&d->started, true);
    for (int i = 0; i < 30000 && !atomic_load(&d->freeing); i++)
        clock_sleep_us(1000);
    /* submit until the stop shows: every accepted probe must still run */
    for (int i = 0; i < 30000; i++) {
        if (workq_submit(d->q, drain_probe, d) != 0) {
            d->refused = true;
            return;
        }
        d->probes_queued++;
        clock_sleep_us(1000);
    }
}

static void free_drains_the_queue(void)
{
    static struct drain d;
    d.q = workq_new(1);
    CHECK(d.q != NULL);
    CHECK(workq_submit(d.q, drain_gate, &d) == 0);
    for (int i = 0; i < 30000 && !atomic_load(&d.started); i++)
        clock_sleep_us(1000);
    int accepted = 0;
    for (int i = 0; i < QUEUED; i++)
        accepted += workq_submit(d.q, drain_count, &d) == 0;
    CHECK(accepted == QUEUED);
    CHECK(workq_pending(d.q) == QUEUED);
    CHECK(atomic_load(&d.counted) == 0);
    atomic_store(&d.freeing, true);
    workq_free(d.q);
    CHECK(d.refused);
    CHECK(atomic_load(&d.counted) == QUEUED);
    CHECK(atomic_load(&d.probes_run) == d.probes_queued);
}

static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;
static int order[8];
static int norder;

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
};

static void wait_gate(void *arg)
{
    struct gate *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void record(void *arg)
{
    pthread_mutex_lock(&order_mu);
    order[norder++] = (int)(intptr_t)arg;
    pthread_mutex_unlock(&order_mu);
}

/* Urgent jobs run before the ordinary ones waiting; a bounded submit is refused (-2)
 * once that many jobs wait, and an urgent one never is. */
static void urgent_and_bounded(void)
{
    struct workq *q = workq_new(1);
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
    CHECK(workq_submit(q, wait_gate, &g) == 0);
    while (workq_pending(q) > 0) /* the worker holds the gate job */
        clock_sleep_us(1000);
    CHECK(workq_submit_bounded(q, record, (void *)(intptr_t)1, 2) == 0);
    CHECK(workq_submit_bounded(q, record, (void *)(intptr_t)2, 2) == 0);
    CHECK(workq_submit_bounded(q, record, (void *)(intptr_t)9, 2) == -2);
    CHECK(workq_submit_urgent(q, record, (void *)(intptr_t)3) == 0);
    CHECK(workq_submit_urgent(q, record, (void *)(intptr_t)4) == 0);
    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_signal(&g.cv);
    pthread_mutex_unlock(&g.mu);
    workq_free(q);
    CHECK(norder == 4);
    CHECK(order[0] == 3 && order[1] == 4 && order[2] == 1 && order[3] == 2);
}

int main(void)
{
    urgent_and_bounded();
    exactly_once();
    fifo_per_submitter();
    free_drains_the_queue();
    return unit_done();
}
