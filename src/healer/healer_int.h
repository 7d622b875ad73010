/* The healer's private parts: the pure rules of the sweep and the performance report
 * (no database), shared by healer.c and its unit test. */
#ifndef STEWARD_HEALER_INT_H
#define STEWARD_HEALER_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/healer.h"
#include "steward/metrics.h"

/* Figures one sweep gathered. Counts of steps that failed or were skipped stay 0. */
struct healer_sweep_figures {
    int64_t started_us;
    long long stuck_actions, requeued_deliveries, failed_deliveries, expired_proposals,
        archived_actions;
    long long success_without_outcome; /* successful actions without an outcome, now */
    long long marked_for_recovery;     /* of those, the ones this sweep marked */
    bool ran_recover, ran_delivery, ran_expire, ran_archive, ran_missing; /* ran and succeeded */
    double db_latency_ms;                                    /* < 0: the database did not answer */
    int pool_waiting;
    bool circuit_open;        /* the pool treats the database as unreachable (503s) */
    json_t *database_issues;  /* borrowed array of slugs; may be NULL (none) */
    int ws_connections;
    double duration_ms;
    json_t *errors; /* borrowed array of {"step","error"}; may be NULL */
};

/* Sets *degraded and appends one reason slug per crossed threshold to reasons (may be
 * NULL): "db_unreachable", "db_latency" (latency >= degraded_db_latency_ms),
 * "pool_waiting" (waiting >= degraded_pool_waiting), "step_failed" (errors not empty). */
bool healer_judge_health(const struct healer_sweep_figures *f, const struct healer_settings *s,
                         json_t *reasons);

/* The pool-queue level of the earlier sweep: "critical" above 10 waiting callers,
 * "warning" above 5, else "ok". */
const char *healer_pool_queue_level(int waiting);

/* The event_data of a self_healing_report (new reference):
 * {"timestamp","instance","duration_ms","actions":[{"kind","count"}],"errors":[...],
 *  "system_health":{"stuck_actions","requeued_deliveries","failed_deliveries",
 *  "expired_proposals","archived_actions","db_latency_ms","pool_waiting",
 *  "ws_connections","degraded","success_without_outcome","pool_queue":{"waiting","level"},
 *  "database_issues":[...],"circuit_open"}}. */
json_t *healer_sweep_event(const struct healer_sweep_figures *f, const char *instance,
                           bool degraded);

/* Per-route figures over an interval. */
struct healer_route_figures {
    const char *route;
    const char *method;
    uint64_t requests;
    uint64_t server_errors; /* 5xx */
    uint64_t client_errors; /* 4xx */
    double error_rate_pct;  /* server_errors / requests * 100 */
    double p50_ms, p95_ms, p99_ms;
};

/* out = now - prev, bucket by bucket (a counter that went backwards reads 0). */
void healer_route_delta(const struct metrics_route_snap *now, const struct metrics_route_snap *prev,
                        struct metrics_route_snap *out);
/* Fills counts, error rate and quantiles (from metrics_lat_bounds) of one delta. */
void healer_route_figures(const struct metrics_route_snap *delta, struct healer_route_figures *out);
/* Quantile q of a pool wait histogram (per-bucket counts, pool_wait_bounds_us), in ms. */
double healer_pool_wait_quantile_ms(const uint64_t *buckets, double q);

/* Routes (and the pool) with fewer samples than this are not judged. */
#define HEALER_MIN_SAMPLES 20

/* What the recommendations are drawn from. */
struct healer_perf_figures {
    const struct healer_route_figures *routes;
    size_t nroutes;
    uint64_t pool_waits;    /* acquires in the interval */
    uint64_t pool_timeouts; /* acquires that gave up */
    double pool_wait_p95_ms;
    bool actions_known;
    long long actions_succeeded, actions_failed;
    size_t slow_jobs;      /* job runs over 5 minutes in the period */
    size_t memory_pressed; /* live instances at memory level warning or critical */
};

/* The memory level of an instance: "critical" at 90 % of its limit or more, "warning" at
 * 80 %, else "ok". */
const char *healer_memory_level(double pressure_pct);

/* Plain-sentence recommendations (new array of strings, possibly empty):
 * - pool wait p95 > perf_pool_wait_p95_ms (with >= HEALER_MIN_SAMPLES waits): larger pool;
 * - any pool timeout: larger pool or shorter transactions;
 * - a route with >= HEALER_MIN_SAMPLES requests and a 5xx rate > perf_error_rate_pct;
 * - a route with >= HEALER_MIN_SAMPLES requests and p99 > perf_route_p99_ms;
 * - >= HEALER_MIN_SAMPLES action outcomes and more failures than successes;
 * - a job run over 5 minutes (slow_jobs);
 * - an instance at memory level warning or critical (memory_pressed). */
json_t *healer_recommendations(const struct healer_perf_figures *p,
                               const struct healer_settings *s);

#endif
