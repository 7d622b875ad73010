/* Lessons: the pure parts (body, patch and filter validation) and the switched-off
 * no-ops, which need no database, as TAP checks.
 *
 * Run with arguments it is also the driver the e2e suite uses to exercise the
 * internal C API against a real PostgreSQL (tests/e2e/test_lessons.py):
 *   test_lessons db CONNINFO ENABLED WINDOW_S record TYPE WORK_ITEM|- STAGE|- [DETAIL]
 *   test_lessons db CONNINFO ENABLED WINDOW_S race THREADS TYPE WORK_ITEM|- STAGE|-
 *   test_lessons db CONNINFO ENABLED WINDOW_S snapshot
 * Each prints one JSON object on stdout; steward's log lines go to stderr. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/err.h"
#include "steward/json.h"
#include "steward/lessons.h"
#include "steward/clock.h"
#include "unit.h"

static json_t *parse(const char *s)
{
    char err[200];
    return jv_parse(s, strlen(s), err, sizeof(err));
}

/* True when errs names field exactly once. */
static bool names(const json_t *errs, const char *field)
{
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e) {
        if (strcmp(json_string_value(json_object_get(e, "field")), field) == 0)
            n++;
    }
    return n == 1;
}

static void check_new(void)
{
    struct lesson_input in;
    json_t *errs = json_array();
    json_t *b = parse("{\"lesson_type\": \"gate_failure\", \"work_item_id\": \"wi-1\", "
                      "\"stage\": \"review\", \"source\": \"auto\", \"status\": \"in_progress\", "
                      "\"attribution\": \"platform\", \"target_domain\": \"future_domain\", "
                      "\"root_cause\": \"line one\\nline two\", \"detail\": {\"a\": [1, 2.5]}}");
    CHECK(lessons_parse_new(b, &in, errs));
    CHECK(json_array_size(errs) == 0);
    CHECK_STR(in.lesson_type, "gate_failure");
    CHECK_STR(in.work_item_id, "wi-1");
    CHECK_STR(in.source, "auto");
    CHECK_STR(in.target_domain, "future_domain");
    CHECK(in.task_id == NULL && in.repo == NULL);
    CHECK(json_is_object(in.detail));
    json_decref(b);

    /* only lesson_type is required */
    b = parse("{\"lesson_type\": \"x\"}");
    CHECK(lessons_parse_new(b, &in, errs) && in.source == NULL && in.detail == NULL);
    json_decref(b);

    /* every bad field is named, unknown fields included */
    b = parse("{\"lesson_type\": \"Gate-Failure\", \"status\": \"\", \"attribution\": 3, "
              "\"target_domain\": \"a b\", \"source\": \"robot\", \"detail\": [1], "
              "\"repo\": \"\", \"stage\": \"a\\u0001b\", \"colour\": \"red\"}");
    CHECK(!lessons_parse_new(b, &in, errs));
    CHECK(json_array_size(errs) == 9);
    CHECK(names(errs, "lesson_type") && names(errs, "status") && names(errs, "attribution"));
    CHECK(names(errs, "target_domain") && names(errs, "source") && names(errs, "detail"));
    CHECK(names(errs, "repo") && names(errs, "stage") && names(errs, "colour"));
    json_array_clear(errs);
    json_decref(b);

    /* missing lesson_type, 65-character slug, overlong identifier and text */
    char big[5200];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    b = json_object();
    json_object_set_new(b, "status", json_stringn(big, 65));
    json_object_set_new(b, "agent", json_stringn(big, LESSONS_ID_MAX + 1));
    json_object_set_new(b, "suggestion", json_stringn(big, LESSONS_TEXT_MAX + 1));
    CHECK(!lessons_parse_new(b, &in, errs));
    CHECK(json_array_size(errs) == 4);
    CHECK(names(errs, "lesson_type") && names(errs, "status") && names(errs, "agent") &&
          names(errs, "suggestion"));
    json_array_clear(errs);
    /* the limits themselves are fine */
    json_object_set_new(b, "lesson_type", json_stringn(big, 64));
    json_object_set_new(b, "status", json_stringn(big, 64));
    json_object_set_new(b, "agent", json_stringn(big, LESSONS_ID_MAX));
    json_object_set_new(b, "suggestion", json_stringn(big, LESSONS_TEXT_MAX));
    CHECK(lessons_parse_new(b, &in, errs) && json_array_size(errs) == 0);
    json_decref(b);

    /* a detail that serialises to more than the limit */
    b = json_pack("{s:s, s:{s:s%}}", "lesson_type", "x", "detail", "k", big, sizeof(big) - 1);
    for (int i = 0; i < 13; i++) {
        char k[8];
        snprintf(k, sizeof(k), "k%d", i);
        json_object_set_new(json_object_get(b, "detail"), k, json_string(big));
    }
    CHECK(!lessons_parse_new(b, &in, errs) && names(errs, "detail"));
    json_array_clear(errs);
    json_decref(b);

    json_t *arr = json_array();
    CHECK(!lessons_parse_new(arr, &in, errs) && names(errs, "body"));
    json_decref(arr);
    json_decref(errs);
}

static void check_patch(void)
{
    json_t *errs = json_array(), *ch = NULL;
    json_t *b = parse("{\"status\": \"closed\", \"attribution\": \"both\", \"target_repo\": null, "
                      "\"root_cause\": \"found it\"}");
    CHECK(lessons_parse_patch(b, &ch, errs));
    CHECK(ch && json_object_size(ch) == 4);
    CHECK_STR(json_string_value(json_object_get(ch, "status")), "closed");
    CHECK(json_is_null(json_object_get(ch, "target_repo")));
    json_decref(ch);
    json_decref(b);

    b = parse("{\"status\": \"closed\", \"lesson_type\": \"x\", \"created_at\": \"2026-01-01\", "
              "\"bogus\": 1}");
    CHECK(!lessons_parse_patch(b, &ch, errs) && ch == NULL);
    CHECK(json_array_size(errs) == 3);
    CHECK(names(errs, "lesson_type") && names(errs, "created_at") && names(errs, "bogus"));
    json_array_clear(errs);
    json_decref(b);

    b = parse("{\"status\": null, \"target_domain\": \"Bad\", \"related_task\": \"\"}");
    CHECK(!lessons_parse_patch(b, &ch, errs) && json_array_size(errs) == 3);
    CHECK(names(errs, "status") && names(errs, "target_domain") && names(errs, "related_task"));
    json_array_clear(errs);
    json_decref(b);

    b = json_object();
    CHECK(!lessons_parse_patch(b, &ch, errs) && names(errs, "body"));
    json_array_clear(errs);
    json_decref(b);
    json_decref(errs);
}

static void check_filter_and_switch(void)
{
    json_t *errs = json_array();
    struct lesson_filter f = {"gate_failure", "new", "org/repo", "wi 1"};
    CHECK(lessons_check_filter(&f, errs) && json_array_size(errs) == 0);
    struct lesson_filter bad = {"Gate", "", "a\tb", ""};
    CHECK(!lessons_check_filter(&bad, errs) && json_array_size(errs) == 4);
    CHECK(names(errs, "lesson_type") && names(errs, "status") && names(errs, "repo") &&
          names(errs, "work_item_id"));
    json_decref(errs);


    /* switched off or NULL: no-ops that need no database */
    CHECK(!lessons_record_auto(NULL, "x", NULL, NULL, NULL));
    struct lessons *off = lessons_new(NULL, NULL, NULL, false, 3600);
    CHECK(off && !lessons_enabled(off));
    CHECK(!lessons_record_auto(off, "x", "w", "s", NULL));
    json_t *snap = NULL;
    CHECK(lessons_snapshot(off, &snap) == ST_OK);
    CHECK(json_object_size(snap) == 1 && json_is_false(json_object_get(snap, "enabled")));
    json_decref(snap);
    struct lesson_outcome o;
    struct lesson_input in = {.lesson_type = "x"};
    CHECK(lessons_record(off, &in, &o) == ST_EDISABLED && !o.recorded);
    json_t *items = NULL;
    long long next = 7;
    struct lesson_filter none = {0};
    CHECK(lessons_list(off, &none, 10, 0, &items, &next) == ST_EDISABLED && !items && !next);
    lessons_free(off);
}

/* ---- driver for the e2e suite ------------------------------------------------------ */

struct race_arg {
    struct lessons *l;
    const char *type, *wid, *stage;
    pthread_barrier_t *go;
    bool written;
};

static void *race_one(void *p)
{
    struct race_arg *a = p;
    pthread_barrier_wait(a->go);
    a->written = lessons_record_auto(a->l, a->type, a->wid, a->stage, NULL);
    return NULL;
}

static const char *opt(const char *s)
{
    return strcmp(s, "-") == 0 ? NULL : s;
}

static int driver(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    struct logger lg = {LOG_INFO, stderr};
    struct metrics *m = metrics_new(0);
    struct pool *pool = pool_new(argv[2], 8, 2000, 5000, &lg);
    struct lessons *l = lessons_new(pool, &lg, m, strcmp(argv[3], "1") == 0, atoi(argv[4]));
    int rc = 0;
    const char *op = argv[5];
    json_t *out = NULL;
    if (strcmp(op, "record") == 0 && argc >= 9) {
        json_t *detail = argc >= 10 ? parse(argv[9]) : NULL;
        double t0 = ((double)clock_now_us() / 1e3);
        bool w = lessons_record_auto(l, argv[6], opt(argv[7]), opt(argv[8]), detail);
        double elapsed = ((double)clock_now_us() / 1e3) - t0;
        /* a record the machine's load pushed past the caller's wait went to the queue */
        int queued = lessons_queued(l);
        w = lessons_flush(l, 10000) > 0 || w;
        out = json_pack("{s:b, s:f, s:i}", "written", w, "elapsed_ms", elapsed, "queued", queued);
        json_decref(detail);
    } else if (strcmp(op, "race") == 0 && argc >= 10) {
        int n = atoi(argv[6]);
        if (n < 1 || n > 64)
            n = 1;
        pthread_t th[64];
        struct race_arg args[64];
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, (unsigned)n);
        for (int i = 0; i < n; i++) {
            args[i] = (struct race_arg){l, argv[7], opt(argv[8]), opt(argv[9]), &go, false};
            pthread_create(&th[i], NULL, race_one, &args[i]);
        }
        int written = 0;
        for (int i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            written += args[i].written;
        }
        /* the threads that waited past their few milliseconds queued their lesson */
        written += lessons_flush(l, 10000);
        pthread_barrier_destroy(&go);
        out = json_pack("{s:i, s:I}", "written", written, "counted",
                        (json_int_t)metrics_counter_value(m, MC_LESSONS_RECORDED));
    } else if (strcmp(op, "snapshot") == 0) {
        int st = lessons_snapshot(l, &out);
        if (st != ST_OK)
            out = json_pack("{s:s}", "error", st_strerror(st));
    } else {
        rc = 2;
    }
    if (out) {
        char *s = json_dumps(out, JSON_COMPACT);
        printf("%s\n", s ? s : "null");
        free(s);
        json_decref(out);
    }
    lessons_free(l);
    pool_free(pool);
    metrics_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "db") == 0)
        return driver(argc, argv);
    check_new();
    check_patch();
    check_filter_and_switch();
    return unit_done();
}
