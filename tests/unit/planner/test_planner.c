/* The planner's pure rules: window, score, tiers, keys, retry and backoff.
 *
 * With arguments it drives the healer-facing C API against a real database, for
 * tests/e2e/test_planner.py (the healer's POST /v1/heal is another module):
 *   test_planner db CONNINFO recover STUCK_AFTER_S
 *   test_planner db CONNINFO archive ARCHIVE_AFTER_DAYS
 *   test_planner db CONNINFO stats SINCE_RFC3339
 * It prints one JSON object on stdout; logs go to stderr. Lessons are recorded with
 * dedup off, so every lesson the planner asks for is written. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/lessons.h"
#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/planner.h"
#include "planner/planner_int.h"
#include "steward/pool.h"
#include "unit.h"

#define MIN_US (60LL * 1000000)
#define NOW (1795860000LL * 1000000) /* 2026-11-28T10:40:00Z */

/* Three points inside a 90-minute window going from (imp0, eng0) to (imp1, eng1). */
static void eval3(long long imp0, long long eng0, long long imp1, long long eng1,
                  struct planner_eval *ev)
{
    struct planner_point pts[] = {
        {NOW - 30 * MIN_US, imp0, eng0},
        {NOW - 20 * MIN_US, (imp0 + imp1) / 2, (eng0 + eng1) / 2},
        {NOW - 10 * MIN_US, imp1, eng1},
    };
    planner_evaluate(pts, 3, NOW, 90, 3, ev);
}

static void test_tiers(void)
{
    struct planner_eval ev;
    /* eng_rate = 1/100 = 0.01: score = 1 - 0.2 = 0.8 exactly, the thread boundary */
    eval3(0, 0, 100, 1, &ev);
    CHECK(ev.sufficient);
    CHECK(ev.stagnation_score == 0.8);
    CHECK(ev.action == PLANNER_THREAD);
    /* a hair more engagement: below 0.8 -> edit */
    eval3(0, 0, 100000, 1001, &ev);
    CHECK(ev.stagnation_score < 0.8 && ev.action == PLANNER_EDIT);
    /* eng_rate = 9/400 = 0.0225: score = 1 - 0.45 = 0.55 exactly, the edit boundary */
    eval3(0, 0, 400, 9, &ev);
    CHECK(ev.stagnation_score == 0.55);
    CHECK(ev.action == PLANNER_EDIT);
    CHECK_STR(planner_tier_name(ev.action), "tier_2");
    CHECK_STR(planner_action_name(ev.action), "edit");
    /* just under 0.55 -> comment */
    eval3(0, 0, 400000, 9001, &ev);
    CHECK(ev.stagnation_score < 0.55 && ev.action == PLANNER_COMMENT);
    /* eng_rate >= 0.05 saturates: score 0 */
    eval3(1000, 10, 2000, 200, &ev);
    CHECK(ev.stagnation_score == 0.0 && ev.action == PLANNER_COMMENT);
    CHECK_STR(planner_tier_name(ev.action), "tier_1");
    CHECK(planner_action_for_score(0.8) == PLANNER_THREAD);
    CHECK(planner_action_for_score(0.7999999999) == PLANNER_EDIT);
    CHECK(planner_action_for_score(0.55) == PLANNER_EDIT);
    CHECK(planner_action_for_score(0.5499999999) == PLANNER_COMMENT);
    CHECK(planner_action_for_score(1.0) == PLANNER_THREAD);
}

static void test_deltas(void)
{
    struct planner_eval ev;
    /* zero impressions delta: eng_rate 0, score 1 -> thread, even with new engagements */
    eval3(500, 5, 500, 50, &ev);
    CHECK(ev.imp_delta == 0 && ev.eng_delta == 45);
    CHECK(ev.eng_rate == 0.0 && ev.stagnation_score == 1.0 && ev.action == PLANNER_THREAD);
    /* decreasing counters clamp to 0 */
    eval3(900, 90, 800, 80, &ev);
    CHECK(ev.imp_delta == 0 && ev.eng_delta == 0);
    CHECK(ev.stagnation_score == 1.0 && ev.action == PLANNER_THREAD);
    /* impressions up, engagements down: eng_delta 0, rate 0 */
    eval3(100, 50, 1100, 40, &ev);
    CHECK(ev.imp_delta == 1000 && ev.eng_delta == 0 && ev.stagnation_score == 1.0);
    /* only first and last matter, by time, whatever the input order */
    struct planner_point pts[] = {
        {NOW - 1 * MIN_US, 1000, 20},  /* last */
        {NOW - 50 * MIN_US, 0, 0},     /* first */
        {NOW - 20 * MIN_US, 99999, 9999},
    };
    planner_evaluate(pts, 3, NOW, 90, 3, &ev);
    CHECK(ev.imp_delta == 1000 && ev.eng_delta == 20);
    CHECK(ev.eng_rate == 0.02);
    CHECK(ev.action == PLANNER_EDIT); /* 1 - 0.02 * 20 = 0.6 */
}

static void test_window(void)
{
    struct planner_eval ev;
    struct planner_point first, last;
    /* a point exactly on the edge (now - window) is inside; one microsecond older is not */
    struct planner_point pts[] = {
        {NOW - 90 * MIN_US - 1, 0, 0},
        {NOW - 90 * MIN_US, 10, 1},
        {NOW - 45 * MIN_US, 20, 1},
        {NOW, 1010, 1},
    };
    size_t n = planner_eval_window(pts, 4, NOW, 90 * MIN_US, &first, &last);
    CHECK(n == 3);
    CHECK(first.ts_us == NOW - 90 * MIN_US && first.impressions == 10);
    CHECK(last.ts_us == NOW && last.impressions == 1010);
    planner_evaluate(pts, 4, NOW, 90, 3, &ev);
    CHECK(ev.sample_count == 3 && ev.sufficient && ev.imp_delta == 1000 && ev.eng_delta == 0);
    /* move the edge point out by one microsecond: only 2 samples left */
    planner_evaluate(pts, 4, NOW + 1, 90, 3, &ev);
    CHECK(ev.sample_count == 2 && !ev.sufficient);
    /* no upper bound: points after now count (the baseline filter is one-sided) */
    struct planner_point future[] = {{NOW + MIN_US, 1, 1}, {NOW + 2 * MIN_US, 2, 1},
                                     {NOW + 3 * MIN_US, 3, 1}};
    planner_evaluate(future, 3, NOW, 90, 3, &ev);
    CHECK(ev.sample_count == 3 && ev.sufficient);
    /* ties keep input order like a stable sort: first given is first, last given is last */
    struct planner_point ties[] = {{NOW - MIN_US, 1, 0}, {NOW - MIN_US, 2, 0},
                                   {NOW, 3, 0}, {NOW, 4, 0}};
    n = planner_eval_window(ties, 4, NOW, 90 * MIN_US, &first, &last);
    CHECK(n == 4 && first.impressions == 1 && last.impressions == 4);
}

static void test_samples(void)
{
    struct planner_eval ev;
    struct planner_point pts[] = {{NOW - MIN_US, 0, 0}, {NOW, 100, 0}};
    planner_evaluate(pts, 2, NOW, 90, 3, &ev);
    CHECK(!ev.sufficient && ev.sample_count == 2);
    planner_evaluate(pts, 0, NOW, 90, 3, &ev);
    CHECK(!ev.sufficient && ev.sample_count == 0);
    planner_evaluate(pts, 2, NOW, 90, 2, &ev);
    CHECK(ev.sufficient && ev.sample_count == 2);
    /* all outside the window */
    planner_evaluate(pts, 2, NOW + 200 * MIN_US, 90, 1, &ev);
    CHECK(!ev.sufficient && ev.sample_count == 0);
}

static void test_key(void)
{
    char key[PLANNER_KEY_LEN], hex[65];
    CHECK(planner_idempotency_key("post-42", PLANNER_EDIT, key) == 0);
    const char *in = "post-42:edit:tier_2";
    crypto_sha256_hex(in, strlen(in), hex);
    CHECK(strncmp(key, "sheal_", 6) == 0 && strlen(key) == 38);
    CHECK(strncmp(key + 6, hex, 32) == 0);
    /* a long id takes the streaming path and gives the same digest as one shot */
    char longid[1500];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    char big[1600];
    strcpy(big, longid);
    strcat(big, ":thread:tier_3");
    crypto_sha256_hex(big, strlen(big), hex);
    CHECK(planner_idempotency_key(longid, PLANNER_THREAD, key) == 0);
    CHECK(strncmp(key + 6, hex, 32) == 0 && strlen(key) == 38);
    enum planner_action a;
    CHECK(planner_action_parse("thread", &a) == 0 && a == PLANNER_THREAD);
    CHECK(planner_action_parse("reply", &a) == -1);
    CHECK(planner_tier_parse("tier_1", &a) == 0 && a == PLANNER_COMMENT);
    CHECK(planner_tier_parse("tier_4", &a) == -1);
}

static void test_retry(void)
{
    const char *transient[] = {"timeout", "rate_limit", "service_unavailable", "network_error"};
    for (int i = 0; i < 4; i++) {
        CHECK(planner_is_transient(transient[i]));
        CHECK(planner_should_retry("failed", transient[i], 1, 5));
        CHECK(planner_should_retry("failed", transient[i], 4, 5));
        CHECK(!planner_should_retry("failed", transient[i], 5, 5));
        CHECK(!planner_should_retry("success", transient[i], 1, 5));
        CHECK(!planner_should_retry("running", transient[i], 1, 5));
    }
    CHECK(!planner_should_retry("failed", "content_rejected", 1, 5));
    CHECK(!planner_should_retry("failed", "Timeout", 1, 5));
    CHECK(!planner_should_retry("failed", NULL, 1, 5));
    CHECK(!planner_is_transient(NULL));

    /* backoff: within [ceiling/2, ceiling], ceiling 30 * 2^(attempts-1) capped at 3600 */
    const char *k = "sheal_0123456789abcdef0123456789abcdef";
    long long ceil = 30;
    for (long long att = 1; att <= 12; att++) {
        long long d = planner_backoff_seconds(k, att);
        CHECK(d >= ceil / 2 && d <= ceil);
        CHECK(d == planner_backoff_seconds(k, att)); /* stable */
        ceil = ceil * 2 > 3600 ? 3600 : ceil * 2;
    }
    CHECK(planner_backoff_seconds(k, 0) == planner_backoff_seconds(k, 1));
    CHECK(planner_backoff_seconds(k, 1000000) <= 3600);
    CHECK(planner_backoff_seconds(k, 1000000) >= 1800);
    /* jitter differs between keys */
    int distinct = 0;
    long long prev = -1;
    for (int i = 0; i < 16; i++) {
        char key[PLANNER_KEY_LEN];
        char post[16];
        snprintf(post, sizeof(post), "p%d", i);
        planner_idempotency_key(post, PLANNER_COMMENT, key);
        long long d = planner_backoff_seconds(key, 6);
        if (d != prev)
            distinct++;
        prev = d;
    }
    CHECK(distinct > 4);
}

static int driver(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    struct logger lg = {LOG_INFO, stderr};
    struct metrics *m = metrics_new(0);
    struct pool *pool = pool_new(argv[2], 2, 2000, 5000, &lg);
    struct lessons *l = lessons_new(pool, &lg, m, true, 0);
    struct planner *p = planner_new(pool, &lg, l);
    const char *op = argv[3];
    json_t *out = NULL;
    int rc = 0, st = ST_EINTERNAL;
    if (strcmp(op, "recover") == 0) {
        long long n = -1;
        st = planner_recover_stuck(p, atoi(argv[4]), &n);
        out = json_pack("{s:s, s:I}", "result", st_strerror(st), "count", (json_int_t)n);
    } else if (strcmp(op, "archive") == 0) {
        long long n = -1;
        st = planner_archive_failed(p, atoi(argv[4]), &n);
        out = json_pack("{s:s, s:I}", "result", st_strerror(st), "count", (json_int_t)n);
    } else if (strcmp(op, "stats") == 0) {
        long long ok = -1, bad = -1;
        int64_t since = 0;
        if (jtime_parse(argv[4], &since) != 0)
            rc = 2;
        else
            st = planner_action_stats(p, since, &ok, &bad);
        out = json_pack("{s:s, s:I, s:I}", "result", st_strerror(st), "succeeded",
                        (json_int_t)ok, "failed", (json_int_t)bad);
    } else {
        rc = 2;
    }
    if (out) {
        char *txt = json_dumps(out, JSON_COMPACT);
        printf("%s\n", txt ? txt : "null");
        free(txt);
        json_decref(out);
    }
    planner_free(p);
    lessons_free(l);
    pool_free(pool);
    metrics_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "db") == 0)
        return driver(argc, argv);
    test_tiers();
    test_deltas();
    test_window();
    test_samples();
    test_key();
    test_retry();
    return unit_done();
}
