/* Prometheus text exposition (format 0.0.4) and the /metrics route. */
#include "exporter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/buf.h"
#include "steward/dbpipe.h"
#include "steward/http.h"
#include "steward/metrics.h"
#include "steward/pool.h"
#include "steward/router.h"

static const char *status_label(int slot, char *tmp)
{
    if (slot == METRICS_STATUS_SLOTS - 1 || metrics_statuses[slot] == 0)
        return "other";
    snprintf(tmp, 8, "%d", metrics_statuses[slot]);
    return tmp;
}

/* Whether slot is shown: a slot the route table names, or the "unmatched" one (the last). */
static bool slot_shown(const struct exporter_sources *src, size_t slot, size_t nslots)
{
    return slot == nslots - 1 || slot < src->router->count;
}

static void route_labels(const struct exporter_sources *src, size_t slot, size_t nslots,
                         const char **route, const char **method)
{
    if (slot < nslots - 1 && slot < src->router->count) {
        *route = src->router->routes[slot].pattern;
        *method = src->router->routes[slot].method;
    } else {
        *route = "unmatched";
        *method = "any";
    }
}

static void render_http(struct buf *b, const struct exporter_sources *src)
{
    size_t nslots = metrics_route_slots(src->m);
    struct metrics_route_snap *snaps = calloc(nslots, sizeof(*snaps));
    if (!snaps) {
        b->oom = true;
        return;
    }
    buf_printf(b, "# HELP http_requests_total HTTP requests by route template, method and "
                  "status.\n# TYPE http_requests_total counter\n");
    for (size_t i = 0; i < nslots; i++)
        metrics_route_snapshot(src->m, i, &snaps[i]);
    for (size_t i = 0; i < nslots; i++) {
        if (!slot_shown(src, i, nslots))
            continue;
        const char *route, *method;
        route_labels(src, i, nslots, &route, &method);
        for (int st = 0; st < METRICS_STATUS_SLOTS; st++) {
            if (!snaps[i].by_status[st])
                continue;
            char tmp[8];
            buf_printf(b, "http_requests_total{route=\"%s\",method=\"%s\",code=\"%s\"} %llu\n",
                       route, method, status_label(st, tmp),
                       (unsigned long long)snaps[i].by_status[st]);
        }
    }
    buf_printf(b, "# HELP http_request_duration_seconds Request latency by route template.\n"
                  "# TYPE http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < nslots; i++) {
        if (!slot_shown(src, i, nslots))
            continue;
        const char *route, *method;
        route_labels(src, i, nslots, &route, &method);
        uint64_t cum = 0;
        for (int k = 0; k < METRICS_LAT_BUCKETS; k++) {
            cum += snaps[i].buckets[k];
            if (k < METRICS_LAT_BUCKETS - 1)
                buf_printf(b,
                           "http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\","
                           "le=\"%g\"} %llu\n",
                           route, method, metrics_lat_bounds[k], (unsigned long long)cum);
            else
                buf_printf(b,
                           "http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\","
                           "le=\"+Inf\"} %llu\n",
                           route, method, (unsigned long long)cum);
        }
        buf_printf(b, "http_request_duration_seconds_sum{route=\"%s\",method=\"%s\"} %.6f\n", route,
                   method, (double)snaps[i].sum_us / 1e6);
        buf_printf(b, "http_request_duration_seconds_count{route=\"%s\",method=\"%s\"} %llu\n",
                   route, method, (unsigned long long)cum);
    }
    free(snaps);
}

static void render_pool(struct buf *b, const struct exporter_sources *src)
{
    struct pool_stats ps;
    pool_stats(src->pool, &ps);
    buf_printf(b, "# HELP db_pool_connections Database pool connections by state.\n"
                  "# TYPE db_pool_connections gauge\n");
    buf_printf(b, "db_pool_connections{state=\"size\"} %d\n", ps.size);
    buf_printf(b, "db_pool_connections{state=\"open\"} %d\n", ps.open);
    buf_printf(b, "db_pool_connections{state=\"busy\"} %d\n", ps.busy);
    buf_printf(b, "db_pool_connections{state=\"idle\"} %d\n", ps.size - ps.busy);
    buf_printf(b, "db_pool_connections{state=\"waiting\"} %d\n", ps.waiting);
    buf_printf(b, "# HELP db_pool_wait_seconds Time spent waiting for a pool connection.\n"
                  "# TYPE db_pool_wait_seconds histogram\n");
    uint64_t cum = 0;
    for (int k = 0; k < POOL_WAIT_BUCKETS; k++) {
        cum += ps.wait_buckets[k];
        if (k < POOL_WAIT_BUCKETS - 1)
            buf_printf(b, "db_pool_wait_seconds_bucket{le=\"%g\"} %llu\n",
                       (double)pool_wait_bounds_us[k] / 1e6, (unsigned long long)cum);
        else
            buf_printf(b, "db_pool_wait_seconds_bucket{le=\"+Inf\"} %llu\n",
                       (unsigned long long)cum);
    }
    buf_printf(b, "db_pool_wait_seconds_sum %.6f\ndb_pool_wait_seconds_count %llu\n", ps.wait_sum_s,
               (unsigned long long)cum);
    buf_printf(b,
               "# HELP db_pool_timeouts_total Acquires that gave up waiting.\n"
               "# TYPE db_pool_timeouts_total counter\ndb_pool_timeouts_total %llu\n",
               (unsigned long long)ps.timeouts_total);
    if (!src->dbpipe)
        return;
    struct dbpipe_stats pp;
    dbpipe_stats(src->dbpipe, &pp);
    buf_printf(b,
               "# HELP db_pipeline_statements_total Hot-path statements run pipelined.\n"
               "# TYPE db_pipeline_statements_total counter\ndb_pipeline_statements_total %llu\n"
               "# HELP db_pipeline_batches_total Round trips that carried them.\n"
               "# TYPE db_pipeline_batches_total counter\ndb_pipeline_batches_total %llu\n"
               "# HELP db_pipeline_expired_total Statements that waited past the acquire "
               "timeout (answered 503).\n"
               "# TYPE db_pipeline_expired_total counter\ndb_pipeline_expired_total %llu\n"
               "# HELP db_pipeline_regrouped_total Statements run again alone because another "
               "statement of their group failed.\n"
               "# TYPE db_pipeline_regrouped_total counter\ndb_pipeline_regrouped_total %llu\n",
               (unsigned long long)pp.jobs, (unsigned long long)pp.batches,
               (unsigned long long)pp.expired, (unsigned long long)pp.regrouped);
}

struct counter_label {
    enum metrics_counter c;
    const char *labels;
};

static void render_counters(struct buf *b, const struct exporter_sources *src)
{
    buf_printf(b,
               "# HELP ws_connections Open device WebSocket connections.\n"
               "# TYPE ws_connections gauge\nws_connections %lld\n",
               (long long)metrics_gauge_value(src->m, MG_WS_CONNECTIONS));
    buf_printf(b,
               "# HELP ws_authenticated_connections Connections that completed hello.\n"
               "# TYPE ws_authenticated_connections gauge\nws_authenticated_connections %lld\n",
               (long long)metrics_gauge_value(src->m, MG_WS_AUTHENTICATED));
    buf_printf(b,
               "# HELP lessons_queued Internal lessons waiting in the retry queue.\n"
               "# TYPE lessons_queued gauge\nlessons_queued %lld\n",
               (long long)metrics_gauge_value(src->m, MG_LESSONS_QUEUED));
    buf_printf(b,
               "# HELP heal_last_sweep_timestamp_seconds Unix time this instance last finished "
               "a self-healing sweep and stored its report; 0: never (the instances take turns: "
               "take the max over them).\n"
               "# TYPE heal_last_sweep_timestamp_seconds gauge\n"
               "heal_last_sweep_timestamp_seconds %lld\n",
               (long long)metrics_gauge_value(src->m, MG_HEAL_LAST_SWEEP_S));
    buf_printf(b,
               "# HELP proposals_delivery_lag_seconds Time from triage to the first send to a "
               "device, over the proposals this instance sent for the first time.\n"
               "# TYPE proposals_delivery_lag_seconds summary\n"
               "proposals_delivery_lag_seconds_sum %.6f\n"
               "proposals_delivery_lag_seconds_count %llu\n",
               (double)metrics_counter_value(src->m, MC_DELIVERY_LAG_US) / 1e6,
               (unsigned long long)metrics_counter_value(src->m, MC_DELIVERY_FIRST));
    static const struct counter_label frames[] = {
        {MC_WS_FRAMES_IN_HELLO, "direction=\"in\",type=\"device_hello\""},
        {MC_WS_FRAMES_IN_ACK, "direction=\"in\",type=\"scout_proposal_ack\""},
        {MC_WS_FRAMES_IN_OTHER, "direction=\"in\",type=\"other\""},
        {MC_WS_FRAMES_OUT_HELLO_OK, "direction=\"out\",type=\"hello_ok\""},
        {MC_WS_FRAMES_OUT_PROPOSAL, "direction=\"out\",type=\"scout_proposal\""},
        {MC_WS_FRAMES_OUT_ACK_OK, "direction=\"out\",type=\"ack_ok\""},
        {MC_WS_FRAMES_OUT_RESOLVED, "direction=\"out\",type=\"scout_proposal_resolved\""},
        {MC_WS_FRAMES_OUT_ERROR, "direction=\"out\",type=\"error\""},
    };
    buf_printf(b, "# HELP ws_frames_total WebSocket frames by direction and type.\n"
                  "# TYPE ws_frames_total counter\n");
    for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++)
        buf_printf(b, "ws_frames_total{%s} %llu\n", frames[i].labels,
                   (unsigned long long)metrics_counter_value(src->m, frames[i].c));
    static const struct counter_label props[] = {
        {MC_PROPOSALS_QUEUED, "event=\"queued\""}, {MC_PROPOSALS_DELIVERED, "event=\"delivered\""},
        {MC_PROPOSALS_ACKED, "event=\"acked\""},   {MC_PROPOSALS_EXPIRED, "event=\"expired\""},
        {MC_PROPOSALS_FAILED, "event=\"failed\""},
    };
    buf_printf(b, "# HELP proposals_total Proposal lifecycle events.\n"
                  "# TYPE proposals_total counter\n");
    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++)
        buf_printf(b, "proposals_total{%s} %llu\n", props[i].labels,
                   (unsigned long long)metrics_counter_value(src->m, props[i].c));
    static const struct counter_label hellos[] = {
        {MC_WS_HELLO_REJECTED_MALFORMED, "reason=\"malformed\""},
        {MC_WS_HELLO_REJECTED_TOKEN, "reason=\"bad_token\""},
        {MC_WS_HELLO_REJECTED_BUSY, "reason=\"unavailable\""},
    };
    buf_printf(b, "# HELP ws_hello_rejected_total Device hellos refused, by reason.\n"
                  "# TYPE ws_hello_rejected_total counter\n");
    for (size_t i = 0; i < sizeof(hellos) / sizeof(hellos[0]); i++)
        buf_printf(b, "ws_hello_rejected_total{%s} %llu\n", hellos[i].labels,
                   (unsigned long long)metrics_counter_value(src->m, hellos[i].c));
    static const struct {
        enum metrics_counter c;
        const char *name, *help;
    } plain[] = {
        {MC_HEAL_RUNS, "heal_runs_total", "Self-healing sweeps run by this instance."},
        {MC_LESSONS_RECORDED, "lessons_recorded_total", "Lessons written by this instance."},
        {MC_HEAL_SKIPPED, "heal_skipped_total",
         "Sweeps skipped because another run held the turn."},
        {MC_HEAL_FAILURES, "heal_step_failures_total", "Sweep steps that failed."},
        {MC_PERF_REPORTS, "perf_reports_total", "Performance reports written by this instance."},
        {MC_LESSONS_DEFERRED, "lessons_deferred_total",
         "Internal lessons that could not be written at once and went to the retry queue."},
        {MC_LESSONS_DROPPED, "lessons_queue_overflow_total",
         "Internal lessons dropped because the retry queue was full."},
        {MC_LESSONS_FAILED, "lessons_record_failures_total",
         "Lessons this instance could not write (the journal is failing)."},
        {MC_WS_SESSIONS_LIMITED, "ws_sessions_limited_total",
         "Device sessions closed 1008 for too many frames in flight or per second."},
        {MC_WS_QUEUE_FULL, "ws_work_refused_total",
         "Acks refused (close 1013) because STEWARD_WORKER_QUEUE_MAX acks (or jobs) waited."},
        {MC_PRESENCE_RELEASE_STATEMENTS, "presence_release_statements_total",
         "Statements that released devices whose last socket here closed (grouped)."},
        {MC_PRESENCE_RELEASED, "presence_released_total", "Devices carried by those statements."},
        {MC_WS_HELLO_STATEMENTS, "ws_hello_statements_total",
         "Token-check statements run for device hellos; each checks a batch of up to "
         "STEWARD_WS_HELLO_BATCH hellos."},
        {MC_INGEST_STATEMENTS, "scouts_ingest_statements_total",
         "Statements that wrote single ingests (POST /v1/scouts/{id}/items); concurrent ones "
         "share one statement and one commit."},
        {MC_PASS_STATEMENTS, "scouts_pass_statements_total",
         "Delivery pass statements run, each for one user or a group of up to "
         "STEWARD_WS_HELLO_BATCH users."},
        {MC_WS_ACK_STATEMENTS, "ws_ack_statements_total",
         "Ack statements run for scout_proposal_ack frames; each acks a batch of up to "
         "STEWARD_WS_HELLO_BATCH acks."},
        {MC_WS_ACCEPT_PAUSED, "ws_accept_pauses_total",
         "Times the device port stopped accepting because STEWARD_WS_MAX_HANDSHAKES "
         "handshakes were in progress; new connections waited in the kernel's accept queue "
         "until half of them were done."},
        {MC_WS_ACCEPT_REFUSED, "ws_accept_refused_total",
         "Connections to the device port closed as soon as accepted because the instance "
         "held STEWARD_WS_MAX_CONNECTIONS device sockets (sessions and handshakes)."},
        {MC_HTTP_PARKED, "http_requests_parked_total",
         "Bond reads and consumes whose database answer took longer than "
         "STEWARD_HTTP_PARK_MS, so that their connection was suspended."},
    };
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", plain[i].name, plain[i].help,
                   plain[i].name, plain[i].name,
                   (unsigned long long)metrics_counter_value(src->m, plain[i].c));
}

char *exporter_render(const struct exporter_sources *src, size_t *len)
{
    struct buf b = {0};
    render_http(&b, src);
    render_pool(&b, src);
    render_counters(&b, src);
    if (b.oom) {
        buf_release(&b);
        return NULL;
    }
    return buf_detach(&b, len);
}

static void metrics_route(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    (void)req;
    size_t len = 0;
    char *text = exporter_render(ctx, &len);
    if (!text) {
        http_problem(resp, 500, "out of memory");
        return;
    }
    resp->status = 200;
    resp->text = text;
    resp->text_len = len;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

int exporter_register(struct router *r, struct exporter_sources *src)
{
    return http_route(r, "GET", "/metrics", AUTH_NONE, metrics_route, src);
}
