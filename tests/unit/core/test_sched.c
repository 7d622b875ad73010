#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "steward/clock.h"
#include "steward/sched.h"
#include "steward/workq.h"
#include "unit.h"

#define MAX_RUNS 256

/* What one job saw of its runs. */
struct rec {
    pthread_mutex_t mu;
    int runs;
    int64_t start_us[MAX_RUNS], end_us[MAX_RUNS];
    int sleep_ms;       /* each run lasts this long */
    atomic_int inside;  /* runs in progress */
    atomic_int overlap; /* the most runs seen in progress at once */
    atomic_bool started;
    atomic_bool done; /* the last run finished */
    pthread_t thread; /* the thread of the last run */
};

static void rec_init(struct rec *r, int sleep_ms)
{
    *r = (struct rec){.sleep_ms = sleep_ms};
    pthread_mutex_init(&r->mu, NULL);
}

static void rec_run(void *ctx)
{
    struct rec *r = ctx;
    int in = atomic_fetch_add(&r->inside, 1) + 1;
    if (in > atomic_load(&r->overlap))
        atomic_store(&r->overlap, in);
    atomic_store(&r->done, false);
    atomic_store(&r->started, true);
    int64_t t0 = clock_now_us();
    if (r->sleep_ms)
        usleep((useconds_t)r->sleep_ms * 1000);
    pthread_mutex_lock(&r->mu);
    if (r->runs < MAX_RUNS) {
        r->start_us[r->runs] = t0;
        r->end_us[r->runs] = clock_now_us();
    }
    r->runs++;
    r->thread = pthread_self();
    pthread_mutex_unlock(&r->mu);
    atomic_fetch_sub(&r->inside, 1);
    atomic_store(&r->done, true);
}

static int rec_runs(struct rec *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->runs;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* The smallest and largest time from the end of a run to the start of the next. */
static void gaps(struct rec *r, int64_t *min_us, int64_t *max_us)
{
    *min_us = INT64_MAX;
    *max_us = 0;
    int n = r->runs < MAX_RUNS ? r->runs : MAX_RUNS;
    for (int i = 1; i < n; i++) {
        int64_t g = r->start_us[i] - r->end_us[i - 1];
        *min_us = g < *min_us ? g : *min_us;
        *max_us = g > *max_us ? g : *max_us;
    }
}

/* Two jobs with their own periods each run about once per period, never sooner than
 * one period after the previous run ended; the first run waits first_ms. */
static void check_periods(void)
{
    struct workq *q = workq_new(2);
    struct sched *s = sched_new(q);
    struct rec a, b;
    rec_init(&a, 5);
    rec_init(&b, 0);
    int64_t t0 = clock_now_us();
    CHECK(sched_add(s, &(struct sched_job){"a", rec_run, &a, 30, 0, 0, false, false, 0}) == 0);
    CHECK(sched_add(s, &(struct sched_job){"b", rec_run, &b, 80, 150, 0, false, false, 0}) == 0);
    CHECK(sched_start(s) == 0);
    CHECK(sched_start(s) == 0); /* twice is harmless */
    usleep(600000);
    sched_stop(s);
    int na = rec_runs(&a), nb = rec_runs(&b);
    /* a: 600 / (30 + 5) = 17 at most; b: first at 150, then every 80: 6 at most */
    CHECK(na >= 6 && na <= 17);
    CHECK(nb >= 2 && nb <= 6);
    CHECK(a.start_us[0] - t0 >= 30000);
    CHECK(b.start_us[0] - t0 >= 150000);
    int64_t lo, hi;
    gaps(&a, &lo, &hi);
    CHECK(lo >= 30000);
    gaps(&b, &lo, &hi);
    CHECK(lo >= 80000);
    /* nothing runs after stop */
    usleep(100000);
    CHECK(rec_runs(&a) == na && rec_runs(&b) == nb);
    sched_free(s);
    workq_free(q);
}

/* A job that runs longer than its period never overlaps itself, even with idle
 * workers; its next run waits one period after it ends. */
static void check_no_overlap(void)
{
    struct workq *q = workq_new(4);
    struct sched *s = sched_new(q);
    struct rec r;
    rec_init(&r, 40);
    CHECK(sched_add(s, &(struct sched_job){"slow", rec_run, &r, 5, 0, 0, false, false, 0}) == 0);
    CHECK(sched_start(s) == 0);
    usleep(400000);
    sched_stop(s);
    CHECK(r.runs >= 3);
    CHECK(atomic_load(&r.overlap) == 1);
    int64_t lo, hi;
    gaps(&r, &lo, &hi);
    CHECK(lo >= 5000);
    sched_free(s);
    workq_free(q);
}

/* sched_stop during a run waits for it to finish, and no run follows. */
static void check_stop_while_running(void)
{
    struct workq *q = workq_new(2);
    struct sched *s = sched_new(q);
    struct rec r;
    rec_init(&r, 200);
    CHECK(sched_add(s, &(struct sched_job){"long", rec_run, &r, 10, 0, 0, false, false, 0}) == 0);
    CHECK(sched_start(s) == 0);
    int64_t limit = clock_now_us() + 2000000;
    while (!atomic_load(&r.started) && clock_now_us() < limit)
        usleep(1000);
    CHECK(atomic_load(&r.started));
    int64_t t0 = clock_now_us();
    sched_stop(s);
    int64_t took = clock_now_us() - t0;
    CHECK(atomic_load(&r.done));
    CHECK(took >= 100000); /* it waited out most of the 200 ms run */
    CHECK(rec_runs(&r) == 1);
    usleep(50000);
    CHECK(rec_runs(&r) == 1);
    sched_stop(s); /* idempotent */
    CHECK(sched_add(s, &(struct sched_job){"late", rec_run, &r, 10, 0, 0, false, false, 0}) == -1);
    CHECK(sched_start(s) == -1);
    sched_free(s);
    workq_free(q);
}

static void block_worker(void *arg)
{
    atomic_store((atomic_bool *)arg, true);
    usleep(200000);
}

/* A run still waiting on the work queue when the scheduler stops is skipped. */
static void check_stop_skips_queued(void)
{
    struct workq *q = workq_new(1);
    struct sched *s = sched_new(q);
    atomic_bool busy = false;
    workq_submit(q, block_worker, &busy);
    while (!atomic_load(&busy))
        usleep(1000);
    struct rec r;
    rec_init(&r, 0);
    CHECK(sched_add(s, &(struct sched_job){"queued", rec_run, &r, 10, 0, 0, false, false, 0}) == 0);
    CHECK(sched_start(s) == 0);
    usleep(60000); /* due and queued behind the blocker */
    sched_stop(s);
    CHECK(rec_runs(&r) == 0);
    sched_free(s);
    workq_free(q);
}

/* Inline jobs run on the scheduler thread and need no queue. */
static void check_inline(void)
{
    struct sched *s = sched_new(NULL);
    struct rec r;
    rec_init(&r, 0);
    CHECK(sched_add(s, &(struct sched_job){"queued", rec_run, &r, 10, 0, 0, false, false, 0}) == -1);
    CHECK(sched_add(s, &(struct sched_job){"inline", rec_run, &r, 10, 0, 0, true, false, 0}) == 0);
    CHECK(sched_start(s) == 0);
    usleep(100000);
    sched_stop(s);
    int n = rec_runs(&r);
    CHECK(n >= 3 && n <= 10);
    CHECK(!pthread_equal(r.thread, pthread_self()));
    sched_free(s);
}

/* Jitter lengthens each wait by 0..jitter_ms. */
static void check_jitter(void)
{
    struct workq *q = workq_new(1);
    struct sched *s = sched_new(q);
    struct rec r;
    rec_init(&r, 0);
    CHECK(sched_add(s, &(struct sched_job){"jit", rec_run, &r, 10, 0, 40, false, false, 0}) == 0);
    CHECK(sched_start(s) == 0);
    usleep(500000);
    sched_stop(s);
    int64_t lo, hi;
    gaps(&r, &lo, &hi);
    CHECK(r.runs >= 4);
    CHECK(lo >= 10000);
    CHECK(hi >= 20000); /* without jitter every gap would be about 10 ms */
    sched_free(s);
    workq_free(q);
}

static void nop(void *ctx)
{
    (void)ctx;
}

static void check_add_rules(void)
{
    struct workq *q = workq_new(1);
    struct sched *s = sched_new(q);
    CHECK(sched_add(s, &(struct sched_job){"zero", nop, NULL, 0, 0, 0, false, false, 0}) == -1);
    CHECK(sched_add(s, &(struct sched_job){"nofn", NULL, NULL, 10, 0, 0, false, false, 0}) == -1);
    CHECK(sched_add(s, &(struct sched_job){"neg", nop, NULL, 10, -1, 0, false, false, 0}) == -1);
    CHECK(sched_add(s, &(struct sched_job){"negj", nop, NULL, 10, 0, -1, false, false, 0}) == -1);
    int ok = 0;
    for (int i = 0; i < SCHED_MAX_JOBS; i++)
        ok += sched_add(s, &(struct sched_job){"n", nop, NULL, 100000, 0, 0, false, false, 0}) == 0;
    CHECK(ok == SCHED_MAX_JOBS);
    CHECK(sched_add(s, &(struct sched_job){"full", nop, NULL, 10, 0, 0, false, false, 0}) == -1);
    sched_free(s); /* never started */
    sched_free(NULL);
    sched_stop(NULL);
    workq_free(q);
}

struct wall_rec {
    atomic_int n;
    int64_t at_us[4];
};

static void wall_run(void *ctx)
{
    struct wall_rec *w = ctx;
    int i = atomic_fetch_add(&w->n, 1);
    if (i < 4)
        w->at_us[i] = clock_wall_us();
}

/* The wall-clock grid: every 15 min at offset 5 min runs at :05, :20, :35, :50. */
static void check_grid(void)
{
    const int64_t min = 60 * 1000000LL, hour = 60 * min;
    int64_t base = 1795000000LL * 1000000 - (1795000000LL * 1000000) % (2 * hour); /* even hour */
    CHECK(sched_grid_delay_us(base, 15 * 60000, 5 * 60000) == 5 * min);
    CHECK(sched_grid_delay_us(base + 5 * min, 15 * 60000, 5 * 60000) == 15 * min);
    CHECK(sched_grid_delay_us(base + 5 * min + 1, 15 * 60000, 5 * 60000) == 15 * min - 1);
    CHECK(sched_grid_delay_us(base + 19 * min, 15 * 60000, 5 * 60000) == 1 * min);
    /* every 2 h at offset 60 min: 01:00, 03:00, ... */
    CHECK(sched_grid_delay_us(base, 120 * 60000, 60 * 60000) == hour);
    CHECK(sched_grid_delay_us(base + hour + 1, 120 * 60000, 60 * 60000) == 2 * hour - 1);
    /* an offset beyond the period is taken modulo it */
    CHECK(sched_grid_delay_us(base, 1000, 300000) == 1000000);
    /* a wall_aligned job runs on the grid: 1 s period, so at whole seconds */
    struct workq *q = workq_new(1);
    struct sched *s = sched_new(q);
    struct wall_rec w = {0};
    struct sched_job j = {.name = "grid", .fn = wall_run, .ctx = &w, .period_ms = 1000,
                          .wall_aligned = true};
    CHECK(sched_add(s, &j) == 0);
    j.offset_ms = -1;
    CHECK(sched_add(s, &j) == -1);
    sched_start(s);
    usleep(2500000);
    sched_free(s);
    workq_free(q);
    int n = atomic_load(&w.n);
    CHECK(n >= 2 && n <= 3);
    for (int i = 0; i < n && i < 4; i++)
        CHECK(w.at_us[i] % 1000000 < 200000); /* shortly after a whole second */
}

int main(void)
{
    check_grid();
    check_periods();
    check_no_overlap();
    check_stop_while_running();
    check_stop_skips_queued();
    check_inline();
    check_jitter();
    check_add_rules();
    return unit_done();
}
