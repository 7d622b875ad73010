/* Pure parts of the healer: quantiles from buckets, interval deltas, health judgement,
 * recommendation thresholds and the report JSON. */
#include <math.h>
#include <string.h>

#include "steward/healer.h"
#include "healer/healer_int.h"
#include "steward/metrics.h"
#include "unit.h"

static int near(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

static const struct healer_settings S = {
    .heal_interval_s = 900,
    .perf_interval_s = 7200,
    .stuck_after_s = 1800,
    .archive_after_days = 7,
    .degraded_db_latency_ms = 250,
    .degraded_pool_waiting = 4,
    .perf_pool_wait_p95_ms = 50,
    .perf_error_rate_pct = 5,
    .perf_route_p99_ms = 250,
};

static int slot_of(int status)
{
    for (int i = 0; i < METRICS_STATUS_SLOTS - 1; i++)
        if (metrics_statuses[i] == status)
            return i;
    return METRICS_STATUS_SLOTS - 1;
}

static void test_quantiles(void)
{
    uint64_t b[METRICS_LAT_BUCKETS] = {0};
    CHECK(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.5) == 0);
    /* 10 samples in (1 ms, 2.5 ms]: linear interpolation inside the bucket */
    b[2] = 10;
    CHECK(near(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.5), 0.00175));
    CHECK(near(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 1.0), 0.0025));
    /* 90 fast, 10 slow: p50 is fast, p95 and p99 land in the slow bucket (0.5 s, 1 s] */
    memset(b, 0, sizeof(b));
    b[0] = 90;
    b[10] = 10;
    CHECK(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.5) <= 0.0005);
    CHECK(near(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.95), 0.75));
    CHECK(near(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.99), 0.95));
    /* everything past the last bound reads as that bound */
    memset(b, 0, sizeof(b));
    b[METRICS_LAT_BUCKETS - 1] = 3;
    CHECK(near(metrics_quantile(b, METRICS_LAT_BUCKETS, metrics_lat_bounds, 0.99), 5.0));

    /* pool wait: 100 acquires, 96 at most 50 us, 4 in (10 ms, 50 ms] */
    uint64_t w[POOL_WAIT_BUCKETS] = {0};
    CHECK(healer_pool_wait_quantile_ms(w, 0.95) == 0);
    w[0] = 96;
    w[8] = 4;
    CHECK(healer_pool_wait_quantile_ms(w, 0.95) <= 0.05);
    CHECK(near(healer_pool_wait_quantile_ms(w, 0.99), 10 + 40 * 0.75));
}

static void test_route_delta_and_figures(void)
{
    struct metrics_route_snap prev = {0}, now = {0}, d;
    prev.by_status[slot_of(200)] = 5;
    prev.buckets[1] = 5;
    prev.sum_us = 4000;
    now.by_status[slot_of(200)] = 15;
    now.by_status[slot_of(404)] = 4;
    now.by_status[slot_of(503)] = 1;
    now.by_status[slot_of(599)] = 1; /* "other": counted, neither 4xx nor 5xx slot */
    now.buckets[1] = 5 + 16;
    now.buckets[5] = 1;
    now.sum_us = 50000;
    healer_route_delta(&now, &prev, &d);
    CHECK(d.by_status[slot_of(200)] == 10);
    CHECK(d.buckets[1] == 16 && d.buckets[5] == 1);
    CHECK(d.sum_us == 46000);
    /* a counter that went backwards reads 0 rather than wrapping */
    struct metrics_route_snap back;
    healer_route_delta(&prev, &now, &back);
    CHECK(back.by_status[slot_of(200)] == 0 && back.sum_us == 0);

    struct healer_route_figures f;
    healer_route_figures(&d, &f);
    CHECK(f.requests == 16);
    CHECK(f.server_errors == 1);
    CHECK(f.client_errors == 4);
    CHECK(near(f.error_rate_pct, 100.0 / 16));
    CHECK(f.p50_ms > 0.5 && f.p50_ms <= 1.0);
    CHECK(f.p50_ms <= f.p95_ms && f.p95_ms <= f.p99_ms);
    CHECK(f.p99_ms > 10 && f.p99_ms <= 25);
}

static void test_judge_health(void)
{
    struct healer_sweep_figures f = {.db_latency_ms = 1.5, .pool_waiting = 0};
    json_t *reasons = json_array();
    CHECK(!healer_judge_health(&f, &S, reasons));
    CHECK(json_array_size(reasons) == 0);
    f.db_latency_ms = 249.9;
    f.pool_waiting = 3;
    CHECK(!healer_judge_health(&f, &S, NULL));
    f.db_latency_ms = 250; /* at the threshold: degraded */
    CHECK(healer_judge_health(&f, &S, reasons));
    CHECK_STR(json_string_value(json_array_get(reasons, 0)), "db_latency");
    json_array_clear(reasons);
    f.db_latency_ms = -1;
    f.pool_waiting = 4;
    f.errors = json_pack("[{s:s, s:s}]", "step", "expire_proposals", "error", "unavailable");
    CHECK(healer_judge_health(&f, &S, reasons));
    CHECK(json_array_size(reasons) == 3);
    CHECK_STR(json_string_value(json_array_get(reasons, 0)), "db_unreachable");
    CHECK_STR(json_string_value(json_array_get(reasons, 1)), "pool_waiting");
    CHECK_STR(json_string_value(json_array_get(reasons, 2)), "step_failed");
    json_decref(f.errors);
    json_decref(reasons);
}

static void test_pool_queue_levels(void)
{
    /* the earlier sweep's levels: warning above 5 waiting, critical above 10 */
    CHECK_STR(healer_pool_queue_level(0), "ok");
    CHECK_STR(healer_pool_queue_level(5), "ok");
    CHECK_STR(healer_pool_queue_level(6), "warning");
    CHECK_STR(healer_pool_queue_level(10), "warning");
    CHECK_STR(healer_pool_queue_level(11), "critical");
}

static void test_sweep_event(void)
{
    struct healer_sweep_figures f = {
        .started_us = 1795000000000000LL, /* 2026-11-18T11:06:40Z */
        .stuck_actions = 2,
        .requeued_deliveries = 3,
        .failed_deliveries = 1,
        .expired_proposals = 4,
        .archived_actions = 0,
        .ran_recover = true,
        .ran_delivery = true,
        .ran_expire = false, /* failed or not wired: no action entry */
        .ran_archive = true,
        .db_latency_ms = 0.1234,
        .pool_waiting = 1,
        .ws_connections = 7,
        .duration_ms = 12.5,
    };
    json_t *ev = healer_sweep_event(&f, "host:1:abcd", true);
    CHECK(ev != NULL);
    CHECK(json_object_size(ev) == 6);
    CHECK_STR(json_string_value(json_object_get(ev, "timestamp")), "2026-11-18T11:06:40Z");
    CHECK_STR(json_string_value(json_object_get(ev, "instance")), "host:1:abcd");
    CHECK(json_array_size(json_object_get(ev, "errors")) == 0);
    json_t *actions = json_object_get(ev, "actions");
    CHECK(json_array_size(actions) == 4);
    static const char *kinds[] = {"stuck_actions_reset", "deliveries_requeued",
                                  "deliveries_failed", "actions_archived"};
    static const long long counts[] = {2, 3, 1, 0};
    for (size_t i = 0; i < 4; i++) {
        json_t *a = json_array_get(actions, i);
        CHECK(json_object_size(a) == 2);
        CHECK_STR(json_string_value(json_object_get(a, "kind")), kinds[i]);
        CHECK(json_integer_value(json_object_get(a, "count")) == counts[i]);
    }
    json_t *h = json_object_get(ev, "system_health");
    static const char *keys[] = {"stuck_actions", "requeued_deliveries", "failed_deliveries",
                                 "expired_proposals", "archived_actions", "db_latency_ms",
                                 "pool_waiting", "ws_connections", "degraded",
                                 "success_without_outcome", "pool_queue", "database_issues",
                                 "circuit_open"};
    CHECK(json_object_size(h) == 13);
    for (size_t i = 0; i < 13; i++)
        CHECK(json_object_get(h, keys[i]) != NULL);
    CHECK_STR(json_string_value(json_object_get(json_object_get(h, "pool_queue"), "level")),
              "ok");
    CHECK(json_array_size(json_object_get(h, "database_issues")) == 0);
    CHECK(json_is_false(json_object_get(h, "circuit_open")));
    CHECK(json_integer_value(json_object_get(h, "expired_proposals")) == 4);
    CHECK(near(json_real_value(json_object_get(h, "db_latency_ms")), 0.123));
    CHECK(json_integer_value(json_object_get(h, "ws_connections")) == 7);
    CHECK(json_is_true(json_object_get(h, "degraded")));
    json_decref(ev);

    f.db_latency_ms = -1;
    ev = healer_sweep_event(&f, "x", false);
    h = json_object_get(ev, "system_health");
    CHECK(json_is_null(json_object_get(h, "db_latency_ms")));
    CHECK(json_is_false(json_object_get(h, "degraded")));
    json_decref(ev);
}

static size_t count_containing(json_t *recs, const char *needle)
{
    size_t n = 0, i;
    json_t *v;
    json_array_foreach(recs, i, v) if (strstr(json_string_value(v), needle)) n++;
    return n;
}

static void test_recommendations(void)
{
    struct healer_route_figures routes[3] = {
        {.route = "/v1/bonds/{user_id}", .method = "GET", .requests = 100, .server_errors = 6,
         .error_rate_pct = 6.0, .p99_ms = 251},
        {.route = "/v1/lessons", .method = "POST", .requests = 100, .server_errors = 5,
         .error_rate_pct = 5.0, .p99_ms = 250}, /* exactly at the thresholds: fine */
        {.route = "/v1/scouts", .method = "POST", .requests = HEALER_MIN_SAMPLES - 1,
         .server_errors = 19, .error_rate_pct = 100, .p99_ms = 9000}, /* too few to judge */
    };
    struct healer_perf_figures p = {.routes = routes, .nroutes = 3};
    json_t *r = healer_recommendations(&p, &S);
    CHECK(json_array_size(r) == 2);
    CHECK(count_containing(r, "GET /v1/bonds/{user_id} answered 6.0% server errors") == 1);
    CHECK(count_containing(r, "GET /v1/bonds/{user_id} had a p99 latency of 251.0 ms") == 1);
    CHECK(count_containing(r, "/v1/lessons") == 0);
    CHECK(count_containing(r, "/v1/scouts") == 0);
    json_decref(r);

    /* the pool: p95 over 50 ms with enough samples recommends a larger pool */
    struct healer_perf_figures q = {.pool_waits = 100, .pool_wait_p95_ms = 51};
    r = healer_recommendations(&q, &S);
    CHECK(json_array_size(r) == 1);
    CHECK(count_containing(r, "STEWARD_DB_POOL_SIZE") == 1);
    CHECK(count_containing(r, "51.0 ms") == 1);
    json_decref(r);
    q.pool_wait_p95_ms = 50;
    r = healer_recommendations(&q, &S);
    CHECK(json_array_size(r) == 0);
    json_decref(r);
    q.pool_waits = HEALER_MIN_SAMPLES - 1;
    q.pool_wait_p95_ms = 500;
    r = healer_recommendations(&q, &S);
    CHECK(json_array_size(r) == 0);
    json_decref(r);
    q.pool_timeouts = 3;
    r = healer_recommendations(&q, &S);
    CHECK(json_array_size(r) == 1);
    CHECK(count_containing(r, "3 requests gave up waiting") == 1);
    json_decref(r);

    /* planner outcomes: more failures than successes over enough actions */
    struct healer_perf_figures a = {.actions_known = true, .actions_succeeded = 9,
                                    .actions_failed = 11};
    r = healer_recommendations(&a, &S);
    CHECK(json_array_size(r) == 1);
    CHECK(count_containing(r, "More planner actions failed (11) than succeeded (9)") == 1);
    json_decref(r);
    a.actions_failed = 10;
    a.actions_succeeded = 10;
    r = healer_recommendations(&a, &S);
    CHECK(json_array_size(r) == 0);
    json_decref(r);
    a.actions_known = false;
    a.actions_failed = 100;
    r = healer_recommendations(&a, &S);
    CHECK(json_array_size(r) == 0);
    json_decref(r);
}

int main(void)
{
    test_quantiles();
    test_route_delta_and_figures();
    test_judge_health();
    test_sweep_event();
    test_pool_queue_levels();
    test_recommendations();
    return unit_done();
}
