/* The metrics leaf: exact counts under concurrent observers, the "unmatched" slot and
 * out-of-range route indices, bucket edges, quantiles from observed requests, counters
 * and gauges. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "steward/metrics.h"
#include "unit.h"

#define NROUTES 5
#define THREADS 8
#define PER_THREAD 56000 /* a multiple of the pattern's period, 140 */

static int near(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

static int slot_of(int status)
{
    for (int i = 0; i < METRICS_STATUS_SLOTS - 1; i++)
        if (metrics_statuses[i] == status)
            return i;
    return METRICS_STATUS_SLOTS - 1;
}

/* The i-th observation every thread makes: route indices -1..NROUTES (both ends
 * unmatched), four statuses (418 is counted as "other") and five durations whose
 * buckets are written out here rather than derived from metrics_lat_bounds. */
static const int statuses[4] = {200, 404, 503, 418};
static const int64_t durations[5] = {100, 1000, 1001, 7000000, 30000};
static const int dur_bucket[5] = {0, 1, 2, METRICS_LAT_BUCKETS - 1, 6};

static int obs_route(int i)
{
    return i % (NROUTES + 2) - 1;
}
static int obs_status(int i)
{
    return statuses[(i / (NROUTES + 2)) % 4];
}
static int obs_dur(int i)
{
    return (i / (4 * (NROUTES + 2))) % 5;
}

struct worker {
    struct metrics *m;
    pthread_barrier_t *start;
};

static void *observe_many(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < PER_THREAD; i++) {
        metrics_http_observe(w->m, obs_route(i), obs_status(i), durations[obs_dur(i)]);
        metrics_count(w->m, MC_HEAL_RUNS, 1);
        metrics_count(w->m, MC_PROPOSALS_QUEUED, 2);
        metrics_gauge_add(w->m, MG_WS_CONNECTIONS, 1);
        metrics_gauge_add(w->m, MG_WS_QUEUED_BYTES, 100);
        metrics_gauge_add(w->m, MG_WS_QUEUED_BYTES, -100);
        if (i % 2)
            metrics_gauge_add(w->m, MG_WS_CONNECTIONS, -1);
    }
    return NULL;
}

/* Runs fn on THREADS threads released together; returns how many started. */
static int run_workers(struct metrics *m, void *(*fn)(void *))
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    pthread_t th[THREADS];
    struct worker w = {m, &start};
    int started = 0;
    for (int t = 0; t < THREADS; t++)
        started += pthread_create(&th[t], NULL, fn, &w) == 0;
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&start);
    return started;
}

static void test_concurrent_exact(void)
{
    struct metrics *m = metrics_new(NROUTES);
    CHECK(m != NULL);
    if (!m)
        return;
    CHECK(metrics_route_slots(m) == NROUTES + 1);
    CHECK(run_workers(m, observe_many) == THREADS);

    /* what the slots must hold, from replaying the pattern on one thread */
    struct metrics_route_snap want[NROUTES + 1];
    memset(want, 0, sizeof(want));
    for (int i = 0; i < PER_THREAD; i++) {
        int r = obs_route(i);
        int slot = r >= 0 && r < NROUTES ? r : NROUTES;
        want[slot].by_status[slot_of(obs_status(i))] += THREADS;
        want[slot].buckets[dur_bucket[obs_dur(i)]] += THREADS;
        want[slot].sum_us += (uint64_t)durations[obs_dur(i)] * THREADS;
    }
    uint64_t total = 0;
    for (int s = 0; s <= NROUTES; s++) {
        struct metrics_route_snap got;
        metrics_route_snapshot(m, (size_t)s, &got);
        CHECK(memcmp(got.by_status, want[s].by_status, sizeof(got.by_status)) == 0);
        CHECK(memcmp(got.buckets, want[s].buckets, sizeof(got.buckets)) == 0);
        CHECK(got.sum_us == want[s].sum_us);
        for (int k = 0; k < METRICS_LAT_BUCKETS; k++)
            total += got.buckets[k];
    }
    CHECK(total == (uint64_t)THREADS * PER_THREAD);
    /* -1 and NROUTES both land in the last slot */
    uint64_t unmatched = 0;
    for (int i = 0; i < PER_THREAD; i++)
        unmatched += obs_route(i) < 0 || obs_route(i) >= NROUTES ? THREADS : 0;
    struct metrics_route_snap un;
    metrics_route_snapshot(m, NROUTES, &un);
    uint64_t un_total = 0;
    for (int k = 0; k < METRICS_STATUS_SLOTS; k++)
        un_total += un.by_status[k];
    CHECK(unmatched == 2ull * THREADS * PER_THREAD / (NROUTES + 2) && un_total == unmatched);
    CHECK(un.by_status[METRICS_STATUS_SLOTS - 1] > 0); /* 418 is "other" */
    CHECK(metrics_counter_value(m, MC_HEAL_RUNS) == (uint64_t)THREADS * PER_THREAD);
    CHECK(metrics_counter_value(m, MC_PROPOSALS_QUEUED) == 2ull * THREADS * PER_THREAD);
    CHECK(metrics_counter_value(m, MC_HEAL_SKIPPED) == 0);
    CHECK(metrics_gauge_value(m, MG_WS_CONNECTIONS) == (int64_t)THREADS * (PER_THREAD / 2));
    CHECK(metrics_gauge_value(m, MG_WS_QUEUED_BYTES) == 0);
    CHECK(metrics_gauge_value(m, MG_WS_AUTHENTICATED) == 0);
    metrics_free(m);
}

/* Every thread on the same route, status and bucket: the tightest race for one counter. */
#define HOT_PER_THREAD 1000000

static void *observe_hot(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < HOT_PER_THREAD; i++) {
        metrics_http_observe(w->m, 0, 204, 7);
        metrics_count(w->m, MC_PERF_REPORTS, 1);
        metrics_gauge_add(w->m, MG_WS_AUTHENTICATED, -1);
    }
    return NULL;
}

static void test_concurrent_hot(void)
{
    struct metrics *m = metrics_new(1);
    CHECK(m != NULL);
    if (!m)
        return;
    CHECK(run_workers(m, observe_hot) == THREADS);
    uint64_t n = (uint64_t)THREADS * HOT_PER_THREAD;
    struct metrics_route_snap s;
    metrics_route_snapshot(m, 0, &s);
    CHECK(s.by_status[slot_of(204)] == n);
    CHECK(s.buckets[0] == n);
    CHECK(s.sum_us == 7 * n);
    CHECK(metrics_counter_value(m, MC_PERF_REPORTS) == n);
    CHECK(metrics_gauge_value(m, MG_WS_AUTHENTICATED) == -(int64_t)n);
    metrics_route_snapshot(m, 1, &s);
    CHECK(s.buckets[0] == 0);
    metrics_free(m);
}

static void test_route_bounds(void)
{
    struct metrics *m = metrics_new(3);
    CHECK(m != NULL);
    if (!m)
        return;
    CHECK(metrics_route_slots(m) == 4);
    metrics_http_observe(m, 0, 200, 10);
    metrics_http_observe(m, 2, 201, 20);
    metrics_http_observe(m, -1, 404, 30);
    metrics_http_observe(m, 3, 404, 40);  /* one past the last route */
    metrics_http_observe(m, 96, 404, 50); /* what a larger route table could hand in */
    metrics_http_observe(m, INT32_MAX, 404, 60);
    metrics_http_observe(m, -7, 405, 70);
    struct metrics_route_snap s;
    metrics_route_snapshot(m, 0, &s);
    CHECK(s.by_status[slot_of(200)] == 1 && s.sum_us == 10);
    metrics_route_snapshot(m, 1, &s);
    CHECK(s.sum_us == 0 && s.buckets[0] == 0);
    metrics_route_snapshot(m, 2, &s);
    CHECK(s.by_status[slot_of(201)] == 1 && s.sum_us == 20);
    metrics_route_snapshot(m, 3, &s);
    CHECK(s.by_status[slot_of(404)] == 4);
    CHECK(s.by_status[slot_of(405)] == 1);
    CHECK(s.buckets[0] == 5);
    CHECK(s.sum_us == 30 + 40 + 50 + 60 + 70);
    /* a slot past the end reads as empty instead of reading past the array */
    memset(&s, 0xff, sizeof(s));
    metrics_route_snapshot(m, 4, &s);
    CHECK(s.sum_us == 0 && s.by_status[0] == 0 && s.buckets[METRICS_LAT_BUCKETS - 1] == 0);
    memset(&s, 0xff, sizeof(s));
    metrics_route_snapshot(m, SIZE_MAX, &s);
    CHECK(s.sum_us == 0 && s.buckets[0] == 0);
    metrics_free(m);

    /* no routes at all: everything is unmatched */
    m = metrics_new(0);
    CHECK(m != NULL && metrics_route_slots(m) == 1);
    if (m) {
        metrics_http_observe(m, 0, 200, 1);
        metrics_http_observe(m, -1, 200, 1);
        metrics_route_snapshot(m, 0, &s);
        CHECK(s.by_status[slot_of(200)] == 2);
        metrics_free(m);
    }
    CHECK(metrics_new(METRICS_MAX_ROUTES + 1) == NULL);
    metrics_free(NULL);
}

static void test_buckets_and_statuses(void)
{
    struct metrics *m = metrics_new(1);
    CHECK(m != NULL);
    if (!m)
        return;
    /* a duration equal to a bound is inside it (Prometheus "le"); just above is not */
    metrics_http_observe(m, 0, 200, 500);     /* 0.0005 s: bucket 0 */
    metrics_http_observe(m, 0, 200, 501);     /* bucket 1 */
    metrics_http_observe(m, 0, 200, 5000000); /* 5 s: the last finite bucket */
    metrics_http_observe(m, 0, 200, 5000001); /* +Inf */
    metrics_http_observe(m, 0, 200, -3);      /* a clock step back: bucket 0, adds nothing */
    metrics_http_observe(m, 0, 500, 0);
    metrics_http_observe(m, 0, 302, 0); /* not listed: "other" */
    metrics_http_observe(m, 0, 999, 0);
    struct metrics_route_snap s;
    metrics_route_snapshot(m, 0, &s);
    CHECK(s.buckets[0] == 5);
    CHECK(s.buckets[1] == 1);
    CHECK(s.buckets[METRICS_LAT_BUCKETS - 2] == 1);
    CHECK(s.buckets[METRICS_LAT_BUCKETS - 1] == 1);
    CHECK(s.sum_us == 500 + 501 + 5000000 + 5000001);
    CHECK(s.by_status[slot_of(200)] == 5);
    CHECK(s.by_status[slot_of(500)] == 1);
    CHECK(slot_of(302) == METRICS_STATUS_SLOTS - 1);
    CHECK(s.by_status[METRICS_STATUS_SLOTS - 1] == 2);
    metrics_free(m);
}

static void test_quantiles_from_observations(void)
{
    struct metrics *m = metrics_new(2);
    CHECK(m != NULL);
    if (!m)
        return;
    struct metrics_route_snap s;
    metrics_route_snapshot(m, 1, &s);
    CHECK(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.99) == 0);
    /* 50 requests of 0.3 ms, 50 of 2 ms */
    for (int i = 0; i < 50; i++) {
        metrics_http_observe(m, 1, 200, 300);
        metrics_http_observe(m, 1, 200, 2000);
    }
    metrics_route_snapshot(m, 1, &s);
    CHECK(near(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.5), 0.0005));
    /* rank 75 is half way through (1 ms, 2.5 ms] */
    CHECK(
        near(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.75), 0.00175));
    CHECK(near(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 1.0), 0.0025));
    /* one request past the last bound: p99 stays in the 2 ms bucket, p100 reads 5 s */
    metrics_http_observe(m, 1, 200, 60000000);
    metrics_route_snapshot(m, 1, &s);
    CHECK(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.99) <= 0.0025);
    CHECK(near(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 1.0), 5.0));
    /* the other route saw none of it */
    metrics_route_snapshot(m, 0, &s);
    CHECK(metrics_quantile(s.buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.5) == 0);
    metrics_free(m);
}

static void test_counters_and_gauges(void)
{
    struct metrics *m = metrics_new(1);
    CHECK(m != NULL);
    if (!m)
        return;
    for (int c = 0; c < MC_COUNT; c++)
        CHECK(metrics_counter_value(m, (enum metrics_counter)c) == 0);
    for (int g = 0; g < MG_COUNT; g++)
        CHECK(metrics_gauge_value(m, (enum metrics_gauge)g) == 0);
    metrics_count(m, MC_LESSONS_RECORDED, 3);
    metrics_count(m, MC_LESSONS_RECORDED, 4);
    metrics_count(m, MC_COUNT, 1); /* not a counter: ignored */
    CHECK(metrics_counter_value(m, MC_LESSONS_RECORDED) == 7);
    CHECK(metrics_counter_value(m, MC_HTTP_PARKED) == 0);
    metrics_gauge_add(m, MG_WS_AUTHENTICATED, 2);
    metrics_gauge_add(m, MG_WS_AUTHENTICATED, -5);
    metrics_gauge_add(m, MG_WS_QUEUED_BYTES, 1 << 20);
    metrics_gauge_add(m, MG_COUNT, 1);
    CHECK(metrics_gauge_value(m, MG_WS_AUTHENTICATED) == -3);
    CHECK(metrics_gauge_value(m, MG_WS_QUEUED_BYTES) == 1 << 20);
    CHECK(metrics_gauge_value(m, MG_WS_CONNECTIONS) == 0);
    /* NULL metrics: the transports may run without them */
    metrics_count(NULL, MC_HEAL_RUNS, 1);
    metrics_gauge_add(NULL, MG_WS_CONNECTIONS, 1);
    metrics_free(m);
}

int main(void)
{
    test_concurrent_exact();
    test_concurrent_hot();
    test_route_bounds();
    test_buckets_and_statuses();
    test_quantiles_from_observations();
    test_counters_and_gauges();
    return unit_done();
}
