/* In-process counters and histograms, updated lock-free (relaxed atomics) on hot paths
 * and rendered as Prometheus text on demand. */
#ifndef STEWARD_METRICS_H
#define STEWARD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "steward/router.h"

#define METRICS_ROUTES (ROUTER_MAX_ROUTES + 1) /* the last slot is "unmatched" */
#define METRICS_LAT_BUCKETS 14
#define METRICS_STATUS_SLOTS 20

/* Upper bounds (seconds) of the request duration histogram; the last bucket is +Inf. */
extern const double metrics_lat_bounds[METRICS_LAT_BUCKETS - 1];
/* HTTP statuses counted separately; anything else lands in the last slot as "other". */
extern const int metrics_statuses[METRICS_STATUS_SLOTS - 1];

/* Named counters other modules bump. */
enum metrics_counter {
    MC_WS_FRAMES_IN_HELLO,
    MC_WS_FRAMES_IN_ACK,
    MC_WS_FRAMES_IN_OTHER,
    MC_WS_FRAMES_OUT_HELLO_OK,
    MC_WS_FRAMES_OUT_PROPOSAL,
    MC_WS_FRAMES_OUT_ACK_OK,
    MC_WS_FRAMES_OUT_RESOLVED,
    MC_WS_FRAMES_OUT_ERROR,
    MC_PROPOSALS_QUEUED,
    MC_PROPOSALS_DELIVERED,
    MC_PROPOSALS_ACKED,
    MC_PROPOSALS_EXPIRED,
    MC_PROPOSALS_FAILED,
    MC_HEAL_RUNS,
    MC_LESSONS_RECORDED,
    MC_HEAL_SKIPPED,  /* sweeps this instance skipped because the turn was taken */
    MC_HEAL_FAILURES, /* sweep steps that failed */
    MC_PERF_REPORTS,  /* performance reports written by this instance */
    MC_HTTP_PARKED,   /* loop requests suspended after waiting STEWARD_HTTP_PARK_MS */
    MC_COUNT
};

struct metrics_route {
    _Atomic uint64_t by_status[METRICS_STATUS_SLOTS];
    _Atomic uint64_t buckets[METRICS_LAT_BUCKETS]; /* per bucket, not cumulative */
    _Atomic uint64_t sum_us;
};

struct metrics {
    struct metrics_route routes[METRICS_ROUTES];
    _Atomic uint64_t counters[MC_COUNT];
};

/* A plain copy of the route figures, for reports that diff two moments. */
struct metrics_route_snap {
    uint64_t by_status[METRICS_STATUS_SLOTS];
    uint64_t buckets[METRICS_LAT_BUCKETS];
    uint64_t sum_us;
};

/* All counters at zero; NULL when out of memory. Free with metrics_free (NULL is a no-op). */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* Records one request: route index from the router, or -1 when nothing matched.
 * Lock-free (relaxed atomics); micros is the request duration. */
void metrics_http_observe(struct metrics *m, int route_index, int status, int64_t micros);
/* Adds n to a named counter (m may be NULL: nothing happens). Lock-free. */
void metrics_count(struct metrics *m, enum metrics_counter c, uint64_t n);
/* The current value of a named counter. */
uint64_t metrics_counter_value(const struct metrics *m, enum metrics_counter c);
/* Copies the figures of one route slot (0..METRICS_ROUTES-1; the last is "unmatched").
 * The copy is not atomic as a whole: a request finishing meanwhile may show in one
 * field and not yet in another, which a later snapshot evens out. */
void metrics_route_snapshot(const struct metrics *m, int slot, struct metrics_route_snap *out);
/* Estimated quantile q (0..1) in seconds from histogram bucket counts; 0 when empty. */
double metrics_quantile(const uint64_t *buckets, size_t nbuckets, const double *bounds,
                        double q);


#ifndef STEWARD_METRICS_RENDER
#define STEWARD_METRICS_RENDER
struct pool;
struct dbpipe;
struct ws_server;

/* What /metrics reads besides the counters. */
struct metrics_sources {
    struct metrics *m;
    const struct router *router;
    struct pool *pool;
    struct dbpipe *dbpipe;    /* may be NULL */
    struct ws_server *ws; /* may be NULL */
};

/* WebSocket figures for modules that may not include the transport header (the healer):
 * all zero when ws is NULL. */
struct metrics_ws_figures {
    int connections;
    int authenticated;
    uint64_t queued_bytes;
};
void metrics_ws_figures(struct ws_server *ws, struct metrics_ws_figures *out);

/* Prometheus text exposition of everything; the caller frees the result. */
char *metrics_render(const struct metrics_sources *src, size_t *len);
/* Registers GET /metrics (unauthenticated). */
int metrics_http_register(struct router *r, struct metrics_sources *src);
#endif

#endif /* STEWARD_METRICS_H */
