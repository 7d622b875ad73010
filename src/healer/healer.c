/* Healer: the self-healing sweep, the performance report, the status summary and the
 * report list (docs/api.md). Logic and SQL only: no transport header, no other capability's
 * header (their work arrives through struct healer_hooks). */
#include "steward/healer.h"

#include "steward/audit.h"

#include "healer_int.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "steward/clock.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/proc.h"
#include "steward/sched.h"
#include "steward/sql.h"

/* How long a claimed turn lasts when its holder dies mid-sweep. */
#define LEASE_S 600
/* A periodic sweep is skipped when the last one started less than this share of the
 * interval ago (on any instance), so N instances sweep about once per interval. */
#define PERIODIC_GAP 0.8
/* GET /v1/status reports delivery figures over this window. */
#define STATUS_DELIVERY_WINDOW_S 86400

#define JOB_SWEEP "heal_sweep"
#define JOB_PERF "perf_report"
#define EV_SWEEP "self_healing_report"
#define EV_PERF "performance_optimization_report"

struct healer {
    struct pool *pool;
    const struct logger *lg;
    struct metrics *m;
    const struct healer_route *routes; /* names the first nroutes slots of m */
    size_t nroutes;
    size_t nslots; /* route slots of m, the "unmatched" one last */
    struct healer_settings s;
    struct healer_hooks hk;
    char instance[160];

    pthread_mutex_t sweep_mu; /* one sweep at a time in this process */
    pthread_mutex_t state_mu; /* guards last_report */
    json_t *last_report;      /* the last report this instance produced, stored or not */

    pthread_mutex_t perf_mu; /* one performance report at a time; guards the baseline */
    struct metrics_route_snap *prev_routes; /* nslots slots */
    uint64_t prev_pool_buckets[POOL_WAIT_BUCKETS];
    uint64_t prev_pool_timeouts;
    int64_t prev_us;
};

/* ------------------------------------------------------------------ statements */

static const struct db_stmt st_claim = {
    "healer_claim",
    "INSERT INTO healer_leases AS l (job_name, holder, token, claimed_until, last_started_at) "
    "VALUES ('" JOB_SWEEP "', $1, $2, now() + make_interval(secs => $3::int), now()) "
    "ON CONFLICT (job_name) DO UPDATE SET holder = EXCLUDED.holder, token = EXCLUDED.token, "
    "claimed_until = EXCLUDED.claimed_until, last_started_at = EXCLUDED.last_started_at "
    "WHERE (l.claimed_until < now() OR l.holder = $1) "
    "AND ($4::float8 IS NULL OR l.last_started_at IS NULL "
    "OR l.last_started_at <= now() - make_interval(secs => $4::float8)) "
    "RETURNING 1",
    4};

static const struct db_stmt st_lease_state = {
    "healer_lease_state",
    "SELECT holder, claimed_until > now() FROM healer_leases WHERE job_name = '" JOB_SWEEP "'",
    0};

static const struct db_stmt st_release = {
    "healer_release",
    "UPDATE healer_leases SET claimed_until = '-infinity', last_finished_at = now() "
    "WHERE job_name = '" JOB_SWEEP "' AND token = $1",
    1};

static const struct db_stmt st_ping = {"healer_ping", "SELECT 1", 0};

static const struct db_stmt st_event_insert = {
    "healer_event_insert",
    "INSERT INTO system_events (event_type, event_data) VALUES ($1, $2::jsonb) "
    "RETURNING id, " SQL_US("created_at"),
    2};

static const struct db_stmt st_heartbeat = {
    "healer_heartbeat",
    "INSERT INTO job_heartbeats (job_name, instance, last_run_at, execution_time_ms, status, "
    "detail) VALUES ($1, $2, now(), $3::float8, $4, $5::jsonb) "
    "ON CONFLICT (job_name) DO UPDATE SET instance = EXCLUDED.instance, "
    "last_run_at = EXCLUDED.last_run_at, execution_time_ms = EXCLUDED.execution_time_ms, "
    "status = EXCLUDED.status, detail = EXCLUDED.detail",
    5};

/* Rows of instances gone for a long time; a range on the primary key. */
static const struct db_stmt st_heartbeat_prune = {
    "healer_heartbeat_prune",
    "DELETE FROM job_heartbeats WHERE ((job_name >= '" JOB_SWEEP ":' AND job_name < '" JOB_SWEEP
    ";') OR (job_name >= '" JOB_PERF ":' AND job_name < '" JOB_PERF ";')) "
    "AND last_run_at < now() - make_interval(days => $1::int)",
    1};

#define REPORT_COLS "id, event_type, event_data::text, " SQL_US("created_at")

static const struct db_stmt st_reports_one = {
    "healer_reports_one",
    "SELECT " REPORT_COLS " FROM system_events WHERE event_type = $1 AND id < $2::int8 "
    "ORDER BY id DESC LIMIT $3::int",
    3};

static const struct db_stmt st_reports_both = {
    "healer_reports_both",
    "SELECT * FROM ("
    "(SELECT " REPORT_COLS " FROM system_events WHERE event_type = '" EV_SWEEP "' "
    "AND id < $1::int8 ORDER BY id DESC LIMIT $2::int) UNION ALL "
    "(SELECT " REPORT_COLS " FROM system_events WHERE event_type = '" EV_PERF "' "
    "AND id < $1::int8 ORDER BY id DESC LIMIT $2::int)) s ORDER BY id DESC LIMIT $2::int",
    2};

static const struct db_stmt st_instance_upsert = {
    "healer_instance_upsert",
    "INSERT INTO instances (id, version, started_at, heartbeat_at, figures) "
    "VALUES ($1, $2, $3::timestamptz, now(), $4::jsonb) "
    "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, "
    "heartbeat_at = EXCLUDED.heartbeat_at, figures = EXCLUDED.figures",
    4};

/* Rows of instances silent for a day; a range on instances_heartbeat_at. */
static const struct db_stmt st_instance_prune = {
    "healer_instance_prune",
    "DELETE FROM instances WHERE heartbeat_at < now() - interval '1 day'", 0};

static const struct db_stmt st_instance_retire = {
    "healer_instance_retire", "DELETE FROM instances WHERE id = $1", 1};

/* Live rows: a heartbeat within $1 seconds (a range on instances_heartbeat_at). */
static const struct db_stmt st_instances_live = {
    "healer_instances_live",
    "SELECT id, version, " SQL_US("started_at") ", " SQL_US("heartbeat_at") ", "
    "greatest(0, extract(epoch from now() - started_at))::int8, figures::text "
    "FROM instances WHERE heartbeat_at >= now() - make_interval(secs => $1::int) "
    "ORDER BY started_at, id",
    1};

/* ------------------------------------------------------------------ pure parts */

static double round3(double v)
{
    return round(v * 1000.0) / 1000.0;
}

bool healer_judge_health(const struct healer_sweep_figures *f, const struct healer_settings *s,
                         json_t *reasons)
{
    bool degraded = false;
#define REASON(slug)                                                                           \
    do {                                                                                       \
        degraded = true;                                                                       \
        if (reasons)                                                                           \
            json_array_append_new(reasons, json_string(slug));                                 \
    } while (0)
    if (f->db_latency_ms < 0)
        REASON("db_unreachable");
    else if (f->db_latency_ms >= (double)s->degraded_db_latency_ms)
        REASON("db_latency");
    if (f->pool_waiting >= s->degraded_pool_waiting)
        REASON("pool_waiting");
    if (f->errors && json_array_size(f->errors) > 0)
        REASON("step_failed");
#undef REASON
    return degraded;
}

static void add_action(json_t *actions, const char *kind, long long count)
{
    json_array_append_new(actions, json_pack("{s:s, s:I}", "kind", kind, "count",
                                             (json_int_t)count));
}

json_t *healer_sweep_event(const struct healer_sweep_figures *f, const char *instance,
                           bool degraded)
{
    json_t *actions = json_array();
    if (f->ran_recover)
        add_action(actions, "stuck_actions_reset", f->stuck_actions);
    if (f->ran_delivery) {
        add_action(actions, "deliveries_requeued", f->requeued_deliveries);
        add_action(actions, "deliveries_failed", f->failed_deliveries);
    }
    if (f->ran_expire)
        add_action(actions, "proposals_expired", f->expired_proposals);
    if (f->ran_archive)
        add_action(actions, "actions_archived", f->archived_actions);
    json_t *latency = f->db_latency_ms < 0 ? json_null() : json_real(round3(f->db_latency_ms));
    json_t *health = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:o, s:i, s:i, s:b}", "stuck_actions",
        (json_int_t)f->stuck_actions, "requeued_deliveries", (json_int_t)f->requeued_deliveries,
        "failed_deliveries", (json_int_t)f->failed_deliveries, "expired_proposals",
        (json_int_t)f->expired_proposals, "archived_actions", (json_int_t)f->archived_actions,
        "db_latency_ms", latency, "pool_waiting", f->pool_waiting, "ws_connections",
        f->ws_connections, "degraded", degraded);
    json_t *errors = f->errors ? json_deep_copy(f->errors) : json_array();
    return json_pack("{s:o, s:s, s:f, s:o, s:o, s:o}", "timestamp", jtime_json(f->started_us),
                     "instance", instance ? instance : "", "duration_ms",
                     round3(f->duration_ms), "actions", actions, "errors", errors,
                     "system_health", health);
}

void healer_route_delta(const struct metrics_route_snap *now,
                        const struct metrics_route_snap *prev, struct metrics_route_snap *out)
{
    for (int i = 0; i < METRICS_STATUS_SLOTS; i++)
        out->by_status[i] =
            now->by_status[i] > prev->by_status[i] ? now->by_status[i] - prev->by_status[i] : 0;
    for (int i = 0; i < METRICS_LAT_BUCKETS; i++)
        out->buckets[i] =
            now->buckets[i] > prev->buckets[i] ? now->buckets[i] - prev->buckets[i] : 0;
    out->sum_us = now->sum_us > prev->sum_us ? now->sum_us - prev->sum_us : 0;
}

void healer_route_figures(const struct metrics_route_snap *d, struct healer_route_figures *out)
{
    out->requests = out->server_errors = out->client_errors = 0;
    for (int i = 0; i < METRICS_STATUS_SLOTS; i++) {
        out->requests += d->by_status[i];
        int code = i < METRICS_STATUS_SLOTS - 1 ? metrics_statuses[i] : 0;
        if (code >= 500)
            out->server_errors += d->by_status[i];
        else if (code >= 400)
            out->client_errors += d->by_status[i];
    }
    out->error_rate_pct =
        out->requests ? (double)out->server_errors * 100.0 / (double)out->requests : 0;
    out->p50_ms = metrics_quantile(d->buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.50) * 1e3;
    out->p95_ms = metrics_quantile(d->buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.95) * 1e3;
    out->p99_ms = metrics_quantile(d->buckets, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.99) * 1e3;
}

double healer_pool_wait_quantile_ms(const uint64_t *buckets, double q)
{
    double bounds[POOL_WAIT_BUCKETS - 1];
    for (int i = 0; i < POOL_WAIT_BUCKETS - 1; i++)
        bounds[i] = (double)pool_wait_bounds_us[i] / 1e6;
    return metrics_quantile(buckets, POOL_WAIT_BUCKETS, bounds, q) * 1e3;
}

static void add_sentence(json_t *arr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_sentence(json_t *arr, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_array_append_new(arr, json_string(text));
}

json_t *healer_recommendations(const struct healer_perf_figures *p,
                               const struct healer_settings *s)
{
    json_t *out = json_array();
    if (p->pool_waits >= HEALER_MIN_SAMPLES && p->pool_wait_p95_ms > s->perf_pool_wait_p95_ms)
        add_sentence(out,
                     "Database pool wait p95 was %.1f ms over %llu acquires, above the %d ms "
                     "threshold: raise STEWARD_DB_POOL_SIZE or shorten long transactions.",
                     p->pool_wait_p95_ms, (unsigned long long)p->pool_waits,
                     s->perf_pool_wait_p95_ms);
    if (p->pool_timeouts > 0)
        add_sentence(out,
                     "%llu requests gave up waiting for a database connection: raise "
                     "STEWARD_DB_POOL_SIZE or look for slow queries holding connections.",
                     (unsigned long long)p->pool_timeouts);
    for (size_t i = 0; i < p->nroutes; i++) {
        const struct healer_route_figures *r = &p->routes[i];
        if (r->requests < HEALER_MIN_SAMPLES)
            continue;
        if (r->error_rate_pct > s->perf_error_rate_pct)
            add_sentence(out,
                         "%s %s answered %.1f%% server errors (%llu of %llu requests), above "
                         "the %d%% threshold: check the error log lines of this route.",
                         r->method, r->route, r->error_rate_pct,
                         (unsigned long long)r->server_errors, (unsigned long long)r->requests,
                         s->perf_error_rate_pct);
        if (r->p99_ms > s->perf_route_p99_ms)
            add_sentence(out,
                         "%s %s had a p99 latency of %.1f ms over %llu requests, above the %d ms "
                         "threshold: look at its queries and indexes.",
                         r->method, r->route, r->p99_ms, (unsigned long long)r->requests,
                         s->perf_route_p99_ms);
    }
    if (p->actions_known && p->actions_succeeded + p->actions_failed >= HEALER_MIN_SAMPLES &&
        p->actions_failed > p->actions_succeeded)
        add_sentence(out,
                     "More planner actions failed (%lld) than succeeded (%lld): look at the "
                     "error codes of the failed actions.",
                     p->actions_failed, p->actions_succeeded);
    return out;
}

/* ------------------------------------------------------------------ construction */

struct healer *healer_new(struct pool *pool, const struct logger *lg, struct metrics *m,
                          const struct healer_route *routes, size_t nroutes,
                          const struct healer_settings *settings,
                          const struct healer_hooks *hooks)
{
    struct healer *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->nslots = metrics_route_slots(m);
    h->prev_routes = calloc(h->nslots, sizeof(*h->prev_routes));
    if (!h->prev_routes) {
        free(h);
        return NULL;
    }
    h->pool = pool;
    h->lg = lg;
    h->m = m;
    h->routes = routes;
    h->nroutes = nroutes;
    h->s = *settings;
    if (hooks)
        h->hk = *hooks;
    char host[64] = "localhost", rnd[9] = "";
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    if (crypto_token(rnd, sizeof(rnd), "", 4) != 0)
        snprintf(rnd, sizeof(rnd), "%08x", (unsigned)clock_now_us());
    snprintf(h->instance, sizeof(h->instance), "%s:%ld:%s", host, (long)getpid(), rnd);
    pthread_mutex_init(&h->sweep_mu, NULL);
    pthread_mutex_init(&h->state_mu, NULL);
    pthread_mutex_init(&h->perf_mu, NULL);
    /* the first performance report covers everything since start-up */
    h->prev_us = settings->started_us ? settings->started_us : jtime_now_us();
    return h;
}

const char *healer_instance(const struct healer *h)
{
    return h->instance;
}

/* ------------------------------------------------------------------ heartbeats */

struct heartbeat {
    const char *job;
    const char *instance;
    double ms;
    const char *status;
    const json_t *detail;
};

static int heartbeat_exec(struct pool_conn *c, const struct heartbeat *hb)
{
    char name[224], ms[32];
    snprintf(name, sizeof(name), "%s:%s", hb->job, hb->instance);
    snprintf(ms, sizeof(ms), "%.3f", hb->ms);
    char *detail = json_dumps(hb->detail, JSON_COMPACT);
    if (!detail)
        return ST_ENOMEM;
    const char *p[] = {name, hb->instance, ms, hb->status, detail};
    PGresult *r = pool_exec(c, &st_heartbeat, p);
    int rc = pool_result_err(c, r);
    PQclear(r);
    free(detail);
    return rc;
}

static int heartbeat_fn(struct pool_conn *c, void *arg)
{
    return heartbeat_exec(c, arg);
}

/* A heartbeat on its own (skips); failures are logged and otherwise ignored. */
static void heartbeat_alone(struct healer *h, const char *job, double ms, const char *status,
                            json_t *detail)
{
    struct heartbeat hb = {job, h->instance, ms, status, detail};
    int rc = pool_with(h->pool, heartbeat_fn, &hb);
    if (rc != ST_OK)
        log_msg(h->lg, LOG_WARN, "cannot record job heartbeat", "job", job, "error",
                st_strerror(rc), NULL);
}

/* ------------------------------------------------------------------ the sweep */

struct claim {
    const char *instance;
    char token[24];
    const char *min_gap; /* NULL on demand */
    bool won;
    bool running; /* when lost: the holder's lease is live */
    char holder[160];
};

static int claim_fn(struct pool_conn *c, void *arg)
{
    struct claim *cl = arg;
    cl->won = cl->running = false;
    cl->holder[0] = '\0';
    char lease[16];
    snprintf(lease, sizeof(lease), "%d", LEASE_S);
    const char *p[] = {cl->instance, cl->token, lease, cl->min_gap};
    PGresult *r = pool_exec(c, &st_claim, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        cl->won = PQntuples(r) == 1;
    PQclear(r);
    if (rc != ST_OK || cl->won)
        return rc;
    r = pool_exec(c, &st_lease_state, NULL);
    rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 1) {
        snprintf(cl->holder, sizeof(cl->holder), "%s", sql_str(r, 0, 0) ? sql_str(r, 0, 0) : "");
        cl->running = sql_bool(r, 0, 1);
    }
    PQclear(r);
    return rc;
}

struct ping {
    double ms;
};

static int ping_fn(struct pool_conn *c, void *arg)
{
    struct ping *pg = arg;
    int64_t t0 = clock_now_us();
    PGresult *r = pool_exec(c, &st_ping, NULL);
    int rc = pool_result_err(c, r);
    PQclear(r);
    pg->ms = (double)(clock_now_us() - t0) / 1e3;
    return rc;
}

struct record {
    const char *event_type;
    const char *data;    /* event_data text */
    const char *token;   /* lease token to release, or NULL */
    struct heartbeat hb; /* written in the same transaction */
    int prune_days;      /* 0: no pruning */
    long long id;
    int64_t created_us;
};

static int record_fn(struct pool_conn *c, void *arg)
{
    struct record *rec = arg;
    rec->id = 0;
    rec->created_us = 0;
    const char *p[] = {rec->event_type, rec->data};
    PGresult *r = pool_exec(c, &st_event_insert, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        rec->id = sql_ll(r, 0, 0);
        rec->created_us = sql_ll(r, 0, 1);
    }
    PQclear(r);
    if (rc == ST_OK && rec->token) {
        const char *pr[] = {rec->token};
        r = pool_exec(c, &st_release, pr);
        rc = pool_result_err(c, r);
        PQclear(r);
    }
    if (rc == ST_OK) {
        json_t *detail = json_deep_copy(rec->hb.detail);
        json_object_set_new(detail, "report_id", json_integer(rec->id));
        struct heartbeat hb = rec->hb;
        hb.detail = detail;
        rc = heartbeat_exec(c, &hb);
        json_decref(detail);
    }
    if (rc == ST_OK && rec->prune_days > 0) {
        char days[16];
        snprintf(days, sizeof(days), "%d", rec->prune_days);
        const char *pp[] = {days};
        r = pool_exec(c, &st_heartbeat_prune, pp);
        rc = pool_result_err(c, r);
        PQclear(r);
    }
    return rc;
}

static json_t *report_object(long long id, const char *event_type, int64_t created_us,
                             json_t *event_data)
{
    return json_pack("{s:o, s:s, s:o, s:O}", "id", id ? json_integer(id) : json_null(),
                     "event_type", event_type, "created_at",
                     created_us ? jtime_json(created_us) : json_null(), "event_data",
                     event_data);
}

static void step_failed(struct healer *h, json_t *errors, const char *step, int rc)
{
    json_array_append_new(errors, json_pack("{s:s, s:s}", "step", step, "error",
                                            st_strerror(rc)));
    metrics_count(h->m, MC_HEAL_FAILURES, 1);
    log_msg(h->lg, LOG_WARN, "sweep step failed", "step", step, "error", st_strerror(rc), NULL);
}

/* The repair steps, each in its own transaction inside the hook. */
static void run_steps(struct healer *h, struct healer_sweep_figures *f)
{
    const struct healer_hooks *k = &h->hk;
    int rc;
    if (k->recover_stuck) {
        long long n = 0;
        rc = k->recover_stuck(k->ctx, h->s.stuck_after_s, &n);
        if (rc == ST_OK) {
            f->stuck_actions = n;
            f->ran_recover = true;
        } else {
            step_failed(h, f->errors, "recover_stuck_actions", rc);
        }
    }
    if (k->delivery_pass) {
        long long rq = 0, fl = 0;
        rc = k->delivery_pass(k->ctx, &rq, &fl);
        if (rc == ST_OK) {
            f->requeued_deliveries = rq;
            f->failed_deliveries = fl;
            f->ran_delivery = true;
        } else {
            step_failed(h, f->errors, "delivery_pass", rc);
        }
    }
    if (k->expire_proposals) {
        long long n = 0;
        rc = k->expire_proposals(k->ctx, &n);
        if (rc == ST_OK) {
            f->expired_proposals = n;
            f->ran_expire = true;
        } else {
            step_failed(h, f->errors, "expire_proposals", rc);
        }
    }
    if (k->archive_actions) {
        long long n = 0;
        rc = k->archive_actions(k->ctx, h->s.archive_after_days, &n);
        if (rc == ST_OK) {
            f->archived_actions = n;
            f->ran_archive = true;
        } else {
            step_failed(h, f->errors, "archive_actions", rc);
        }
    }
}

static void measure(struct healer *h, struct healer_sweep_figures *f, json_t *pool_obj)
{
    struct ping pg = {0};
    int rc = pool_with(h->pool, ping_fn, &pg);
    f->db_latency_ms = rc == ST_OK ? pg.ms : -1;
    if (rc != ST_OK)
        step_failed(h, f->errors, "measure_db_latency", rc);
    struct pool_stats ps;
    pool_stats(h->pool, &ps);
    f->pool_waiting = ps.waiting;
    f->ws_connections = (int)metrics_gauge_value(h->m, MG_WS_CONNECTIONS);
    json_object_set_new(pool_obj, "size", json_integer(ps.size));
    json_object_set_new(pool_obj, "open", json_integer(ps.open));
    json_object_set_new(pool_obj, "busy", json_integer(ps.busy));
    json_object_set_new(pool_obj, "waiting", json_integer(ps.waiting));
}

static void record_degraded(struct healer *h, json_t *event, json_t *reasons, long long id)
{
    if (!h->hk.record_lesson)
        return;
    size_t i;
    json_t *reason;
    json_array_foreach(reasons, i, reason)
    {
        json_t *detail = json_pack(
            "{s:O, s:O, s:{s:i, s:i}}", "system_health",
            json_object_get(event, "system_health"), "errors", json_object_get(event, "errors"),
            "thresholds", "degraded_db_latency_ms", h->s.degraded_db_latency_ms,
            "degraded_pool_waiting", h->s.degraded_pool_waiting);
        if (id)
            json_object_set_new(detail, "report_id", json_integer(id));
        json_object_set_new(detail, "instance", json_string(h->instance));
        h->hk.record_lesson(h->hk.ctx, "health_degraded", "system_health",
                            json_string_value(reason), detail);
        json_decref(detail);
    }
}

static const char *skip_reason(enum healer_skip s)
{
    switch (s) {
    case HEALER_SKIP_RUNNING_HERE:
        return "running_here";
    case HEALER_SKIP_RUNNING_ELSEWHERE:
        return "running_elsewhere";
    case HEALER_SKIP_RAN_RECENTLY:
        return "ran_recently";
    default:
        return "ran";
    }
}

static void note_skip(struct healer *h, enum healer_skip why, const char *holder, double ms)
{
    metrics_count(h->m, MC_HEAL_SKIPPED, 1);
    json_t *detail = json_pack("{s:s}", "reason", skip_reason(why));
    if (holder && *holder)
        json_object_set_new(detail, "holder", json_string(holder));
    heartbeat_alone(h, JOB_SWEEP, ms, "skipped", detail);
    log_msg(h->lg, LOG_INFO, "sweep skipped", "reason", skip_reason(why), "holder",
            holder ? holder : "", NULL);
    json_decref(detail);
}

static int sweep_locked(struct healer *h, bool on_demand, json_t **report,
                        enum healer_skip *skip, char *holder, size_t cap)
{
    int64_t t0 = clock_now_us();
    struct claim cl = {.instance = h->instance};
    char gap[32];
    if (!on_demand) {
        snprintf(gap, sizeof(gap), "%.3f", h->s.heal_interval_s * PERIODIC_GAP);
        cl.min_gap = gap;
    }
    if (crypto_token(cl.token, sizeof(cl.token), "", 8) != 0)
        return ST_EINTERNAL;
    int rc = pool_with(h->pool, claim_fn, &cl);
    if (rc != ST_OK) {
        log_msg(h->lg, LOG_WARN, "sweep could not claim its turn", "error", st_strerror(rc),
                NULL);
        json_t *detail = json_pack("{s:s}", "error", st_strerror(rc));
        heartbeat_alone(h, JOB_SWEEP, (double)(clock_now_us() - t0) / 1e3, "failed", detail);
        json_decref(detail);
        return rc;
    }
    if (!cl.won) {
        *skip = cl.running || on_demand ? HEALER_SKIP_RUNNING_ELSEWHERE : HEALER_SKIP_RAN_RECENTLY;
        if (holder && cap)
            snprintf(holder, cap, "%s", cl.holder);
        note_skip(h, *skip, cl.holder, (double)(clock_now_us() - t0) / 1e3);
        return ST_ECONFLICT;
    }
    metrics_count(h->m, MC_HEAL_RUNS, 1);

    /* timestamp and duration cover the time this instance held the turn */
    t0 = clock_now_us();
    struct healer_sweep_figures f = {.started_us = jtime_now_us(), .errors = json_array()};
    run_steps(h, &f);
    json_t *pool_obj = json_object();
    measure(h, &f, pool_obj);
    f.duration_ms = (double)(clock_now_us() - t0) / 1e3;
    json_t *reasons = json_array();
    bool degraded = healer_judge_health(&f, &h->s, reasons);
    json_t *event = healer_sweep_event(&f, h->instance, degraded);
    json_object_set_new(event, "pool", pool_obj);
    char *text = json_dumps(event, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_t *hb_detail = json_pack("{s:O, s:b}", "errors", f.errors, "degraded", degraded);
    struct record rec = {.event_type = EV_SWEEP,
                         .data = text,
                         .token = cl.token,
                         .hb = {JOB_SWEEP, h->instance, f.duration_ms,
                                json_array_size(f.errors) ? "partial" : "ok", hb_detail},
                         .prune_days = h->s.archive_after_days};
    rc = text ? pool_tx(h->pool, record_fn, &rec) : ST_ENOMEM;
    if (rc != ST_OK) {
        /* what the sweep did stays in the log; the lease expires by itself */
        struct log_line l;
        log_begin(&l, h->lg, LOG_ERROR, "sweep report could not be stored");
        log_str(&l, "error", st_strerror(rc));
        log_str(&l, "report", text ? text : "");
        log_end(&l);
        rec.id = 0;
        rec.created_us = 0;
    } else {
        struct log_line l;
        log_begin(&l, h->lg, LOG_INFO, "sweep done");
        log_int(&l, "report_id", rec.id);
        log_dbl(&l, "duration_ms", f.duration_ms);
        log_int(&l, "errors", (long long)json_array_size(f.errors));
        log_int(&l, "degraded", degraded);
        log_end(&l);
    }
    if (degraded)
        record_degraded(h, event, reasons, rec.id);
    json_t *rep = report_object(rec.id, EV_SWEEP, rec.created_us, event);
    pthread_mutex_lock(&h->state_mu);
    json_decref(h->last_report);
    h->last_report = json_incref(rep);
    pthread_mutex_unlock(&h->state_mu);
    *report = rep;
    free(text);
    json_decref(hb_detail);
    json_decref(reasons);
    json_decref(event);
    json_decref(f.errors);
    return ST_OK;
}

int healer_audit_sweep(struct healer *h, const char *actor, const json_t *report)
{
    json_t *d = json_object();
    json_t *st = json_object_get(report, "status");
    if (d && json_is_string(st))
        json_object_set(d, "status", st);
    int rc = d ? audit_record(h->pool, actor, "heal.run", "healer:sweep", d) : ST_ENOMEM;
    json_decref(d);
    return rc;
}

int healer_sweep(struct healer *h, bool on_demand, json_t **report, enum healer_skip *skip,
                 char *holder, size_t cap)
{
    *report = NULL;
    *skip = HEALER_RAN;
    if (holder && cap)
        holder[0] = '\0';
    if (pthread_mutex_trylock(&h->sweep_mu) != 0) {
        *skip = HEALER_SKIP_RUNNING_HERE;
        if (holder && cap)
            snprintf(holder, cap, "%s", h->instance);
        note_skip(h, *skip, h->instance, 0);
        return ST_ECONFLICT;
    }
    int rc = sweep_locked(h, on_demand, report, skip, holder, cap);
    pthread_mutex_unlock(&h->sweep_mu);
    return rc;
}

/* ------------------------------------------------------------------ performance report */

static json_t *route_json(const struct healer_route_figures *r)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "route", r->route,
                     "method", r->method, "requests", (json_int_t)r->requests, "server_errors",
                     (json_int_t)r->server_errors, "client_errors",
                     (json_int_t)r->client_errors, "error_rate_pct", round3(r->error_rate_pct),
                     "p50_ms", round3(r->p50_ms), "p95_ms", round3(r->p95_ms), "p99_ms",
                     round3(r->p99_ms));
}

static int perf_locked(struct healer *h, json_t **report)
{
    int64_t t0 = clock_now_us();
    int64_t now_us = jtime_now_us();
    struct metrics_route_snap *now = calloc(h->nslots, sizeof(*now));
    struct healer_route_figures *figs = calloc(h->nslots, sizeof(*figs));
    if (!now || !figs) {
        free(now);
        free(figs);
        return ST_ENOMEM;
    }
    size_t nfigs = 0;
    json_t *routes = json_array();
    for (size_t i = 0; i < h->nslots; i++) {
        metrics_route_snapshot(h->m, i, &now[i]);
        struct metrics_route_snap d;
        healer_route_delta(&now[i], &h->prev_routes[i], &d);
        struct healer_route_figures *fg = &figs[nfigs];
        healer_route_figures(&d, fg);
        if (fg->requests == 0)
            continue;
        if (i < h->nroutes && i < h->nslots - 1) {
            fg->route = h->routes[i].pattern;
            fg->method = h->routes[i].method;
        } else {
            fg->route = "unmatched";
            fg->method = "any";
        }
        json_array_append_new(routes, route_json(fg));
        nfigs++;
    }
    struct pool_stats ps;
    pool_stats(h->pool, &ps);
    uint64_t wd[POOL_WAIT_BUCKETS], waits = 0;
    for (int i = 0; i < POOL_WAIT_BUCKETS; i++) {
        wd[i] = ps.wait_buckets[i] > h->prev_pool_buckets[i]
                    ? ps.wait_buckets[i] - h->prev_pool_buckets[i]
                    : 0;
        waits += wd[i];
    }
    struct healer_perf_figures pf = {
        .routes = figs,
        .nroutes = nfigs,
        .pool_waits = waits,
        .pool_timeouts = ps.timeouts_total > h->prev_pool_timeouts
                             ? ps.timeouts_total - h->prev_pool_timeouts
                             : 0,
        .pool_wait_p95_ms = healer_pool_wait_quantile_ms(wd, 0.95),
    };
    json_t *actions = json_null();
    if (h->hk.action_stats) {
        long long ok = 0, bad = 0;
        int rc = h->hk.action_stats(h->hk.ctx, h->prev_us, &ok, &bad);
        if (rc == ST_OK) {
            pf.actions_known = true;
            pf.actions_succeeded = ok;
            pf.actions_failed = bad;
            json_decref(actions);
            actions = json_pack("{s:I, s:I, s:o}", "succeeded", (json_int_t)ok, "failed",
                                (json_int_t)bad, "success_rate",
                                ok + bad ? json_real(round3((double)ok / (double)(ok + bad)))
                                         : json_null());
        } else {
            log_msg(h->lg, LOG_WARN, "performance report: action stats failed", "error",
                    st_strerror(rc), NULL);
        }
    }
    json_t *delivery = NULL;
    if (h->hk.delivery_stats) {
        int rc = h->hk.delivery_stats(h->hk.ctx, h->prev_us, &delivery);
        if (rc != ST_OK) {
            log_msg(h->lg, LOG_WARN, "performance report: delivery stats failed", "error",
                    st_strerror(rc), NULL);
            json_decref(delivery);
            delivery = NULL;
        }
    }
    json_t *event = json_pack(
        "{s:o, s:s, s:o, s:f, s:o, s:o, s:o, s:{s:I, s:I, s:f}, s:o}", "timestamp",
        jtime_json(now_us), "instance", h->instance, "since", jtime_json(h->prev_us),
        "interval_s", round3((double)(now_us - h->prev_us) / 1e6), "routes", routes, "delivery",
        delivery ? delivery : json_null(), "actions", actions, "pool", "waits",
        (json_int_t)pf.pool_waits, "timeouts", (json_int_t)pf.pool_timeouts, "wait_p95_ms",
        round3(pf.pool_wait_p95_ms), "recommendations", healer_recommendations(&pf, &h->s));
    free(figs);
    char *text = event ? json_dumps(event, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_t *hb_detail = json_object();
    struct record rec = {
        .event_type = EV_PERF,
        .data = text,
        .hb = {JOB_PERF, h->instance, (double)(clock_now_us() - t0) / 1e3, "ok", hb_detail}};
    int rc = text ? pool_tx(h->pool, record_fn, &rec) : ST_ENOMEM;
    free(text);
    json_decref(hb_detail);
    if (rc != ST_OK) {
        /* keep the baseline: the next report covers this interval too */
        log_msg(h->lg, LOG_WARN, "performance report could not be stored", "error",
                st_strerror(rc), NULL);
        json_decref(event);
        free(now);
        return rc;
    }
    memcpy(h->prev_routes, now, h->nslots * sizeof(*now));
    memcpy(h->prev_pool_buckets, ps.wait_buckets, sizeof(h->prev_pool_buckets));
    h->prev_pool_timeouts = ps.timeouts_total;
    h->prev_us = now_us;
    free(now);
    metrics_count(h->m, MC_PERF_REPORTS, 1);
    if (report)
        *report = report_object(rec.id, EV_PERF, rec.created_us, event);
    json_decref(event);
    return ST_OK;
}

int healer_perf_report(struct healer *h, json_t **report)
{
    if (report)
        *report = NULL;
    pthread_mutex_lock(&h->perf_mu);
    int rc = perf_locked(h, report);
    pthread_mutex_unlock(&h->perf_mu);
    return rc;
}

/* ------------------------------------------------------------------ reports and status */

bool healer_report_type_valid(const char *event_type)
{
    return event_type && (strcmp(event_type, EV_SWEEP) == 0 || strcmp(event_type, EV_PERF) == 0);
}

struct list {
    const char *event_type;
    int64_t before_id;
    int limit;
    json_t *items;
    int64_t next_id;
};

static json_t *row_report(const PGresult *r, int i)
{
    return json_pack("{s:I, s:o, s:o, s:o}", "id", (json_int_t)sql_ll(r, i, 0), "event_type",
                     sql_json_str(r, i, 1), "created_at", sql_json_time(r, i, 3), "event_data",
                     sql_json_parse(r, i, 2));
}

static int list_fn(struct pool_conn *c, void *arg)
{
    struct list *l = arg;
    json_array_clear(l->items);
    l->next_id = 0;
    char before[24], lim[16];
    sql_fmt_ll(before, l->before_id > 0 ? l->before_id : INT64_MAX);
    snprintf(lim, sizeof(lim), "%d", l->limit + 1);
    PGresult *r;
    if (l->event_type) {
        const char *p[] = {l->event_type, before, lim};
        r = pool_exec(c, &st_reports_one, p);
    } else {
        const char *p[] = {before, lim};
        r = pool_exec(c, &st_reports_both, p);
    }
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        int n = PQntuples(r);
        for (int i = 0; i < n && i < l->limit; i++)
            json_array_append_new(l->items, row_report(r, i));
        if (n > l->limit)
            l->next_id = sql_ll(r, l->limit - 1, 0);
    }
    PQclear(r);
    return rc;
}

int healer_reports_list(struct healer *h, const char *event_type, int64_t before_id, int limit,
                        json_t **items, int64_t *next_id)
{
    struct list l = {event_type, before_id, limit, json_array(), 0};
    int rc = pool_with(h->pool, list_fn, &l);
    if (rc != ST_OK) {
        json_decref(l.items);
        *items = NULL;
        return rc;
    }
    *items = l.items;
    *next_id = l.next_id;
    return ST_OK;
}

json_t *healer_status(struct healer *h)
{
    struct pool_stats ps;
    pool_stats(h->pool, &ps);
    json_t *pool = json_pack("{s:i, s:i, s:i, s:i, s:i, s:I, s:I}", "size", ps.size, "open",
                             ps.open, "busy", ps.busy, "idle", ps.size - ps.busy, "waiting",
                             ps.waiting, "acquired_total", (json_int_t)ps.acquired_total,
                             "timeouts_total", (json_int_t)ps.timeouts_total);
    json_t *ws = json_pack("{s:I, s:I, s:I}", "connections",
                           (json_int_t)metrics_gauge_value(h->m, MG_WS_CONNECTIONS),
                           "authenticated",
                           (json_int_t)metrics_gauge_value(h->m, MG_WS_AUTHENTICATED),
                           "queued_bytes",
                           (json_int_t)metrics_gauge_value(h->m, MG_WS_QUEUED_BYTES));
    struct ping pg = {0};
    bool reachable = pool_with(h->pool, ping_fn, &pg) == ST_OK;
    json_t *delivery = NULL, *lessons = NULL, *last = NULL;
    if (reachable && h->hk.delivery_stats &&
        h->hk.delivery_stats(h->hk.ctx, jtime_now_us() - (int64_t)STATUS_DELIVERY_WINDOW_S * 1000000,
                             &delivery) != ST_OK) {
        json_decref(delivery);
        delivery = NULL;
    }
    if (delivery && json_is_object(delivery))
        json_object_set_new(delivery, "window_s", json_integer(STATUS_DELIVERY_WINDOW_S));
    if (reachable && h->hk.lessons_snapshot &&
        h->hk.lessons_snapshot(h->hk.ctx, &lessons) != ST_OK) {
        json_decref(lessons);
        lessons = NULL;
    }
    if (reachable) {
        json_t *items = NULL;
        int64_t next = 0;
        if (healer_reports_list(h, EV_SWEEP, 0, 1, &items, &next) == ST_OK &&
            json_array_size(items) == 1)
            last = json_incref(json_array_get(items, 0));
        json_decref(items);
    }
    if (!last) {
        pthread_mutex_lock(&h->state_mu);
        last = json_incref(h->last_report);
        pthread_mutex_unlock(&h->state_mu);
    }
    int64_t uptime = (jtime_now_us() - h->s.started_us) / 1000000;
    return json_pack("{s:s, s:s, s:I, s:o, s:o, s:{s:b, s:o}, s:o, s:o, s:o}", "version",
                     STEWARD_VERSION, "instance", h->instance, "uptime_s",
                     (json_int_t)(uptime > 0 ? uptime : 0), "pool", pool, "ws", ws, "database",
                     "reachable", reachable, "latency_ms",
                     reachable ? json_real(round3(pg.ms)) : json_null(), "delivery",
                     delivery ? delivery : json_null(), "lessons",
                     lessons ? lessons : json_null(), "last_sweep", last ? last : json_null());
}

/* ------------------------------------------------------------------ instance registry */

/* A heartbeat is live for this many ticks. */
#define INSTANCE_LIVE_TICKS 3

/* What this instance measures in itself (new reference). */
static json_t *instance_figures(struct healer *h)
{
    struct pool_stats ps;
    pool_stats(h->pool, &ps);
    uint64_t requests = 0, server_errors = 0;
    for (size_t i = 0; i < h->nslots; i++) {
        struct metrics_route_snap snap;
        metrics_route_snapshot(h->m, i, &snap);
        struct healer_route_figures fg;
        healer_route_figures(&snap, &fg);
        requests += fg.requests;
        server_errors += fg.server_errors;
    }
    const char *source = NULL;
    int64_t limit = proc_memory_limit_bytes(&source);
    int64_t rss = proc_rss_bytes();
    return json_pack("{s:{s:i, s:i, s:i, s:i, s:I}, s:I, s:o, s:o, s:o, s:I, s:I}", "pool",
                     "size", ps.size, "open", ps.open, "busy", ps.busy, "waiting", ps.waiting,
                     "timeouts_total", (json_int_t)ps.timeouts_total, "sockets",
                     (json_int_t)metrics_gauge_value(h->m, MG_WS_CONNECTIONS), "rss_bytes",
                     rss >= 0 ? json_integer(rss) : json_null(), "memory_limit_bytes",
                     limit > 0 ? json_integer(limit) : json_null(), "memory_limit_source",
                     source ? json_string(source) : json_null(), "requests_total",
                     (json_int_t)requests, "server_errors_total", (json_int_t)server_errors);
}

struct beat {
    const char *id;
    const char *started;
    const char *figures;
};

static int beat_fn(struct pool_conn *c, void *arg)
{
    struct beat *b = arg;
    const char *p[] = {b->id, STEWARD_VERSION, b->started, b->figures};
    PGresult *r = pool_exec(c, &st_instance_upsert, p);
    int rc = pool_result_err(c, r);
    PQclear(r);
    if (rc != ST_OK)
        return rc;
    r = pool_exec(c, &st_instance_prune, NULL);
    rc = pool_result_err(c, r);
    PQclear(r);
    return rc;
}

int healer_instance_beat(struct healer *h)
{
    json_t *fig = instance_figures(h);
    char *text = fig ? json_dumps(fig, JSON_COMPACT) : NULL;
    json_decref(fig);
    if (!text)
        return ST_ENOMEM;
    char started[32];
    sql_fmt_time(started, h->s.started_us ? h->s.started_us : jtime_now_us());
    struct beat b = {h->instance, started, text};
    int rc = pool_tx(h->pool, beat_fn, &b);
    free(text);
    if (rc != ST_OK)
        log_msg(h->lg, LOG_WARN, "cannot record the instance heartbeat", "error",
                st_strerror(rc), NULL);
    return rc;
}

static int retire_fn(struct pool_conn *c, void *arg)
{
    const char *p[] = {arg};
    PGresult *r = pool_exec(c, &st_instance_retire, p);
    int rc = pool_result_err(c, r);
    PQclear(r);
    return rc;
}

void healer_instance_retire(struct healer *h)
{
    if (h)
        (void)pool_with(h->pool, retire_fn, h->instance);
}

struct instances {
    int live_s;
    bool with_figures;
    json_t *items;
};

static json_t *json_get_or_null(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v ? json_incref(v) : json_null();
}

static int instances_fn(struct pool_conn *c, void *arg)
{
    struct instances *in = arg;
    json_array_clear(in->items);
    char secs[16];
    snprintf(secs, sizeof(secs), "%d", in->live_s);
    const char *p[] = {secs};
    PGresult *r = pool_exec(c, &st_instances_live, p);
    int rc = pool_result_err(c, r);
    for (int i = 0; rc == ST_OK && i < PQntuples(r); i++) {
        json_t *fig = sql_json_parse(r, i, 5);
        json_t *pool = json_object_get(fig, "pool");
        json_t *item = json_pack(
            "{s:o, s:o, s:o, s:o, s:I, s:{s:o, s:o, s:o}, s:o, s:o}", "id", sql_json_str(r, i, 0),
            "version", sql_json_str(r, i, 1), "started_at", sql_json_time(r, i, 2),
            "heartbeat_at", sql_json_time(r, i, 3), "uptime_s", (json_int_t)sql_ll(r, i, 4),
            "pool", "size", json_get_or_null(pool, "size"), "busy",
            json_get_or_null(pool, "busy"), "waiting", json_get_or_null(pool, "waiting"),
            "sockets", json_get_or_null(fig, "sockets"), "rss_bytes",
            json_get_or_null(fig, "rss_bytes"));
        if (item && in->with_figures)
            json_object_set(item, "figures", fig ? fig : json_null());
        json_decref(fig);
        if (!item || json_array_append_new(in->items, item) != 0)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    return rc;
}

int healer_instances_list(struct healer *h, bool with_figures, json_t **items)
{
    struct instances in = {h->s.instance_heartbeat_s * INSTANCE_LIVE_TICKS, with_figures,
                           json_array()};
    *items = NULL;
    if (!in.items)
        return ST_ENOMEM;
    int rc = pool_with(h->pool, instances_fn, &in);
    if (rc != ST_OK) {
        json_decref(in.items);
        return rc;
    }
    *items = in.items;
    return ST_OK;
}

/* ------------------------------------------------------------------ periodic jobs */

static void instance_job(void *arg)
{
    healer_instance_beat(arg);
}


static void sweep_job(void *arg)
{
    struct healer *h = arg;
    json_t *rep = NULL;
    enum healer_skip skip;
    healer_sweep(h, false, &rep, &skip, NULL, 0);
    json_decref(rep);
}

static void perf_job(void *arg)
{
    healer_perf_report(arg, NULL);
}

int healer_start(struct healer *h, struct sched *sc)
{
    const struct sched_job sweep = {.name = JOB_SWEEP,
                                    .fn = sweep_job,
                                    .ctx = h,
                                    .period_ms = (int64_t)h->s.heal_interval_s * 1000};
    const struct sched_job perf = {.name = JOB_PERF,
                                   .fn = perf_job,
                                   .ctx = h,
                                   .period_ms = (int64_t)h->s.perf_interval_s * 1000};
    const struct sched_job beat = {.name = "instance_heartbeat",
                                   .fn = instance_job,
                                   .ctx = h,
                                   .period_ms = (int64_t)h->s.instance_heartbeat_s * 1000,
                                   .first_ms = 1};
    if (sched_add(sc, &sweep) != 0 || sched_add(sc, &perf) != 0 || sched_add(sc, &beat) != 0)
        return -1;
    log_msg(h->lg, LOG_INFO, "healer started", "instance", h->instance, NULL);
    return 0;
}

void healer_free(struct healer *h)
{
    if (!h)
        return;
    json_decref(h->last_report);
    pthread_mutex_destroy(&h->sweep_mu);
    pthread_mutex_destroy(&h->state_mu);
    pthread_mutex_destroy(&h->perf_mu);
    free(h->prev_routes);
    free(h);
}
