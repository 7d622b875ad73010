#include "steward/metrics.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

const double metrics_lat_bounds[METRICS_LAT_BUCKETS - 1] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

const int metrics_statuses[METRICS_STATUS_SLOTS - 1] = {
    200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 414, 415, 422, 429, 431, 500, 503, 0, 0};

struct metrics_route {
    _Atomic uint64_t by_status[METRICS_STATUS_SLOTS];
    _Atomic uint64_t buckets[METRICS_LAT_BUCKETS]; /* per bucket, not cumulative */
    _Atomic uint64_t sum_us;
};

struct metrics {
    _Atomic uint64_t counters[MC_COUNT];
    _Atomic int64_t gauges[MG_COUNT];
    size_t nroutes;                /* route slots before the "unmatched" one */
    struct metrics_route routes[]; /* nroutes + 1 */
};

struct metrics *metrics_new(size_t nroutes)
{
    if (nroutes > METRICS_MAX_ROUTES)
        return NULL;
    struct metrics *m =
        calloc(1, sizeof(struct metrics) + (nroutes + 1) * sizeof(struct metrics_route));
    if (m)
        m->nroutes = nroutes;
    return m;
}

size_t metrics_route_slots(const struct metrics *m)
{
    return m->nroutes + 1;
}

void metrics_free(struct metrics *m)
{
    free(m);
}

static int status_slot(int status)
{
    for (int i = 0; i < METRICS_STATUS_SLOTS - 1; i++)
        if (metrics_statuses[i] == status)
            return i;
    return METRICS_STATUS_SLOTS - 1;
}

void metrics_http_observe(struct metrics *m, int route_index, int status, int64_t micros)
{
    size_t slot =
        route_index >= 0 && (size_t)route_index < m->nroutes ? (size_t)route_index : m->nroutes;
    struct metrics_route *r = &m->routes[slot];
    double s = (double)micros / 1e6;
    int b = 0;
    while (b < METRICS_LAT_BUCKETS - 1 && s > metrics_lat_bounds[b])
        b++;
    atomic_fetch_add_explicit(&r->by_status[status_slot(status)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->sum_us, (uint64_t)(micros > 0 ? micros : 0),
                              memory_order_relaxed);
}

void metrics_count(struct metrics *m, enum metrics_counter c, uint64_t n)
{
    if (m && c < MC_COUNT)
        atomic_fetch_add_explicit(&m->counters[c], n, memory_order_relaxed);
}

uint64_t metrics_counter_value(const struct metrics *m, enum metrics_counter c)
{
    return c < MC_COUNT ? atomic_load_explicit(&m->counters[c], memory_order_relaxed) : 0;
}

void metrics_gauge_add(struct metrics *m, enum metrics_gauge g, int64_t delta)
{
    if (m && g < MG_COUNT)
        atomic_fetch_add_explicit(&m->gauges[g], delta, memory_order_relaxed);
}

void metrics_gauge_set(struct metrics *m, enum metrics_gauge g, int64_t value)
{
    if (m && g < MG_COUNT)
        atomic_store_explicit(&m->gauges[g], value, memory_order_relaxed);
}

int64_t metrics_gauge_value(const struct metrics *m, enum metrics_gauge g)
{
    return g < MG_COUNT ? atomic_load_explicit(&m->gauges[g], memory_order_relaxed) : 0;
}

void metrics_route_snapshot(const struct metrics *m, size_t slot, struct metrics_route_snap *out)
{
    if (slot > m->nroutes) {
        memset(out, 0, sizeof(*out));
        return;
    }
    const struct metrics_route *r = &m->routes[slot];
    for (int i = 0; i < METRICS_STATUS_SLOTS; i++)
        out->by_status[i] = atomic_load_explicit(&r->by_status[i], memory_order_relaxed);
    for (int i = 0; i < METRICS_LAT_BUCKETS; i++)
        out->buckets[i] = atomic_load_explicit(&r->buckets[i], memory_order_relaxed);
    out->sum_us = atomic_load_explicit(&r->sum_us, memory_order_relaxed);
}

double metrics_quantile(const uint64_t *buckets, size_t nbuckets, const double *bounds, double q)
{
    uint64_t total = 0;
    for (size_t i = 0; i < nbuckets; i++)
        total += buckets[i];
    if (total == 0)
        return 0;
    double rank = q * (double)total;
    uint64_t seen = 0;
    for (size_t i = 0; i < nbuckets; i++) {
        if (buckets[i] == 0)
            continue;
        if ((double)(seen + buckets[i]) >= rank) {
            double lo = i == 0 ? 0 : bounds[i - 1];
            if (i == nbuckets - 1)
                return lo; /* +Inf bucket: report its lower bound */
            double hi = bounds[i];
            double frac = (rank - (double)seen) / (double)buckets[i];
            return lo + (hi - lo) * frac;
        }
        seen += buckets[i];
    }
    return bounds[nbuckets - 2];
}
