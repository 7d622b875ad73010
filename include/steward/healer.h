/* Healer: self-healing sweeps, performance reports and the status summary (docs/api.md).
 *
 * A sweep repairs what got stuck (through hooks the other capabilities provide), measures
 * health and writes a "self_healing_report" to system_events. Only one instance sweeps at
 * a time: the turn is a lease row in healer_leases claimed with one UPDATE (transaction
 * scoped, so it holds behind a transaction-mode pooler). A performance report
 * ("performance_optimization_report") is written once per period for the deployment by
 * the instance that wins the same kind of lease ("perf_report"): its own traffic (the
 * difference of the in-process histograms since its previous report) plus every live
 * instance's figures from the instance registry and the slow jobs. Both periodic jobs
 * record themselves in job_heartbeats under "<job>:<instance>".
 *
 * This module includes no transport header and no other capability's header: app.c wires
 * the hooks. */
#ifndef STEWARD_HEALER_H
#define STEWARD_HEALER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/pool.h"
struct router;

struct healer;

/* How the performance report names route slot i of struct metrics (app builds the table
 * from the route table; the strings are borrowed). */
struct healer_route {
    const char *method;  /* "GET" */
    const char *pattern; /* "/v1/bonds/{user_id}" */
};

struct sched;

/* Intervals and thresholds (from struct config). */
struct healer_settings {
    int heal_interval_s;        /* STEWARD_HEAL_INTERVAL_S: sweep period */
    int perf_interval_s;        /* STEWARD_PERF_INTERVAL_S: performance report period */
    int stuck_after_s;          /* running actions older than this are reset */
    int archive_after_days;     /* failed actions older than this are archived */
    int degraded_db_latency_ms; /* a round trip at or above this is degraded */
    int degraded_pool_waiting;  /* this many callers waiting for a connection is degraded */
    int perf_pool_wait_p95_ms;  /* pool wait p95 above this recommends a larger pool */
    int perf_error_rate_pct;    /* a route with more 5xx than this percentage is flagged */
    int perf_route_p99_ms;      /* a route with a p99 above this is flagged */
    int64_t started_us;         /* process start (epoch microseconds), for uptime_s */
    int instance_heartbeat_s;   /* STEWARD_INSTANCE_HEARTBEAT_S: instance registry tick */
    int heal_offset_s;          /* STEWARD_HEAL_OFFSET_S: the sweep's place in its period */
    int perf_offset_s;          /* STEWARD_PERF_OFFSET_S: the report's place in its period */
};

/* What the sweep and the reports call in the other capabilities. Every hook may be NULL:
 * the step is then skipped (its count stays 0) or the field is null. Each hook returns
 * ST_* and runs in its own transaction. */
struct healer_hooks {
    void *ctx;
    /* running actions initiated more than stuck_after_s ago -> failed/timeout */
    int (*recover_stuck)(void *ctx, int stuck_after_s, long long *count);
    /* re-send deliveries past the ack timeout, fail those out of attempts */
    int (*delivery_pass)(void *ctx, long long *requeued, long long *failed);
    /* proposals past expires_at -> expired (content erased) */
    int (*expire_proposals)(void *ctx, long long *count);
    /* successful actions without an outcome: *total now, *marked newly marked for
     * recovery */
    int (*mark_missing_outcomes)(void *ctx, long long *total, long long *marked);
    /* failed actions older than archive_after_days -> actions_archive */
    int (*archive_actions)(void *ctx, int archive_after_days, long long *count);
    /* action outcomes recorded since since_us */
    int (*action_stats)(void *ctx, int64_t since_us, long long *succeeded, long long *failed);
    /* delivery counts and latencies since since_us; *out is a new reference */
    int (*delivery_stats)(void *ctx, int64_t since_us, json_t **out);
    /* the lessons snapshot object; *out is a new reference */
    int (*lessons_snapshot)(void *ctx, json_t **out);
    /* never-raise lesson recording (detail borrowed); returns true when written */
    bool (*record_lesson)(void *ctx, const char *lesson_type, const char *work_item_id,
                          const char *stage, json_t *detail);
};

/* Creates the healer. pool, lg, m and routes are borrowed and must outlive it; routes
 * names the first nroutes route slots of m (the slots after them read "unmatched") and
 * may be filled in until healer_start. The WebSocket figures are m's ws gauges.
 * settings and hooks are copied. No thread runs and nothing touches the database until
 * healer_start / a call. Returns NULL when out of memory. */
struct healer *healer_new(struct pool *pool, const struct logger *lg, struct metrics *m,
                          const struct healer_route *routes, size_t nroutes,
                          const struct healer_settings *settings,
                          const struct healer_hooks *hooks);
/* Adds the periodic jobs to sc: the sweep every heal_interval_s at heal_offset_s and the
 * performance report every perf_interval_s at perf_offset_s, both on the wall clock's
 * grid (sched_job.wall_aligned), and the instance heartbeat every instance_heartbeat_s
 * (first run at once). sc must be stopped before healer_free. Returns 0, or -1 when sc
 * refused a job. */
int healer_start(struct healer *h, struct sched *sc);
/* Frees the healer. NULL is a no-op. */
void healer_free(struct healer *h);

/* The outcome of healer_sweep besides its ST_* result. */
enum healer_skip {
    HEALER_RAN = 0,
    HEALER_SKIP_RUNNING_HERE,      /* this instance is already sweeping */
    HEALER_SKIP_RUNNING_ELSEWHERE, /* another instance holds the turn */
    HEALER_SKIP_RAN_RECENTLY       /* periodic only: a sweep ran less than 0.8 interval ago */
};

/* Runs one sweep now (on_demand) or as the periodic job. On ST_OK, *report is the
 * written report ({"id","event_type","created_at","event_data"}, new reference). When
 * the turn is taken, returns ST_ECONFLICT and sets *skip (and copies the holder's
 * instance name into holder, cap bytes, when known). ST_EUNAVAIL when the database could
 * not be reached to claim the turn. A sweep whose report could not be stored still
 * returns ST_OK with "id": null. Steps that fail are logged and listed in the report's
 * "errors"; they never undo the others. */
int healer_sweep(struct healer *h, bool on_demand, json_t **report, enum healer_skip *skip,
                 char *holder, size_t cap);
/* Records an on-demand sweep (POST /v1/heal) by actor in the audit trail, with the
 * report's id, whether the system was degraded and how many steps failed. ST_*. */
int healer_audit_sweep(struct healer *h, const char *actor, const json_t *report);

/* Writes one performance report now (what the periodic job does), when this instance
 * wins the period's turn (ST_ECONFLICT when another holds it or one ran less than 0.8
 * interval ago). *report (may be NULL) gets the written report, new reference.
 * ST_EUNAVAIL when it could not be stored (the next report then covers the longer
 * interval). */
int healer_perf_report(struct healer *h, json_t **report);

/* Lists reports newest first. event_type is NULL (both kinds) or one of
 * "self_healing_report", "performance_optimization_report"; before_id is the cursor (0 =
 * from the newest). *items is a new array; *next_id is the cursor of the next page or 0.
 * Returns ST_*. */
int healer_reports_list(struct healer *h, const char *event_type, int64_t before_id, int limit,
                        json_t **items, int64_t *next_id);
/* True when event_type is a report type healer_reports_list accepts. */
bool healer_report_type_valid(const char *event_type);

/* The GET /v1/status object (new reference; never NULL unless out of memory). Parts
 * that need the database are null when it is unreachable. */
json_t *healer_status(struct healer *h);

/* This instance's name ("host:pid:random"), as written in heartbeats and reports. */
const char *healer_instance(const struct healer *h);

/* The instance registry (table instances). Each instance upserts its row every
 * instance_heartbeat_s (a job healer_start adds, first run at once) with the figures it
 * measures in itself: {"pool":{"size","open","busy","waiting","timeouts_total"},
 * "sockets","rss_bytes","memory_limit_bytes","memory_limit_source","requests_total",
 * "server_errors_total"}. A row whose heartbeat is older than three ticks is not live;
 * rows silent for a day are deleted by the heartbeat. */
/* One heartbeat now (what the job does). Returns ST_*. */
int healer_instance_beat(struct healer *h);
/* Deletes this instance's row (at shutdown; failures ignored). */
void healer_instance_retire(struct healer *h);
/* The live instances, oldest start first: a new array of
 * {"id","version","started_at","heartbeat_at","uptime_s","pool":{"size","busy","waiting"},
 *  "sockets","rss_bytes"} (with_figures adds the whole stored "figures" object).
 * Returns ST_*. */
int healer_instances_list(struct healer *h, bool with_figures, json_t **items);

/* Registers POST /v1/heal (admin), GET /v1/reports, GET /v1/status and GET /v1/instances
 * (read).
 * Does not dereference h (the route table command passes NULL). Returns 0 or -1 when the
 * table is full. Implemented in src/healer/healer_http.c. */
int healer_http_register(struct router *r, struct healer *h);

#endif
