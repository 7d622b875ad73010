#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "steward/log.h"
#include "core/log_int.h"
#include "unit.h"

/* The line's "ts" is the time of the call, formatted as "%04d-%02d-%02dT%02d:%02d:%02d"
 * of gmtime_r plus ".%03ldZ" (what the logger wrote before its formatter was written by
 * hand): taken between two clock readings, it must equal the reference of one of the
 * milliseconds in between. */
static void check_ts(void)
{
    int ok = 0, runs = 0;
    for (int i = 0; i < 200; i++) {
        char out[256] = {0};
        FILE *f = fmemopen(out, sizeof(out), "w");
        if (!f)
            break;
        struct logger lg = {LOG_INFO, f};
        struct timespec a, b;
        clock_gettime(CLOCK_REALTIME, &a);
        log_msg(&lg, LOG_INFO, "t", NULL);
        clock_gettime(CLOCK_REALTIME, &b);
        fclose(f);
        runs++;
        const char *ts = strstr(out, "{\"ts\":\"");
        const char *end = ts ? strchr(ts + 7, '"') : NULL;
        if (!end)
            continue;
        char got[64];
        snprintf(got, sizeof(got), "%.*s", (int)(end - ts - 7), ts + 7);
        int64_t from = (int64_t)a.tv_sec * 1000 + a.tv_nsec / 1000000;
        int64_t to = (int64_t)b.tv_sec * 1000 + b.tv_nsec / 1000000;
        for (int64_t ms = from; ms <= to; ms++) {
            time_t t = (time_t)(ms / 1000);
            struct tm tm;
            gmtime_r(&t, &tm);
            char want[96];
            snprintf(want, sizeof(want), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
            if (strcmp(got, want) == 0) {
                ok++;
                break;
            }
        }
    }
    CHECK(runs == 200 && ok == runs);
}

static void check_int(void)
{
    const long long vals[] = {0,   1,         -1,         9,         10,        -10,          200,
                              499, 123456789, -987654321, LLONG_MAX, LLONG_MIN, LLONG_MIN + 1};
    int bad = 0;
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char got[24], want[32];
        snprintf(want, sizeof(want), "%lld", vals[i]);
        if (strcmp(log_fmt_int(got, vals[i]), want) != 0)
            bad++;
    }
    long long v = 1;
    for (int i = 0; i < 60; i++, v = v * 2 + (i % 3)) {
        char got[24], want[32];
        snprintf(want, sizeof(want), "%lld", -v);
        if (strcmp(log_fmt_int(got, -v), want) != 0)
            bad++;
    }
    CHECK(bad == 0);
}

/* traceparent parsing, and the per-thread scope that puts trace_id on every line */
static void check_trace(void)
{
    char id[LOG_TRACE_ID_LEN + 1], canon[56];
    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    CHECK(log_traceparent_parse(tp, id, canon) == 0);
    CHECK(strcmp(id, "4bf92f3577b34da6a3ce929d0e0e4736") == 0 && strcmp(canon, tp) == 0);
    CHECK(log_traceparent_parse("0a-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", id,
                                canon) == 0 &&
          strcmp(canon, tp) == 0);
    const char *bad[] = {
        NULL,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", /* 00 has no tail */
        "0a-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  /* tail without '-' */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(log_traceparent_parse(bad[i], id, canon) == -1);

    char out[512] = {0};
    FILE *f = fmemopen(out, sizeof(out), "w");
    struct logger lg = {LOG_INFO, f};
    struct log_scope sc;
    memcpy(sc.trace_id, id, sizeof(sc.trace_id));
    const struct log_scope *prev = log_scope_set(&sc);
    log_msg(&lg, LOG_INFO, "in", NULL);
    CHECK(log_scope_set(prev) == &sc);
    log_msg(&lg, LOG_INFO, "out", NULL);
    fclose(f);
    CHECK(strstr(out, "\"msg\":\"in\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}\n") !=
          NULL);
    CHECK(strstr(out, "\"msg\":\"out\"}\n") != NULL);
}

int main(void)
{
    char out[512] = {0};
    FILE *f = fmemopen(out, sizeof(out), "w");
    struct logger lg = {LOG_INFO, f};
    log_msg(&lg, LOG_DEBUG, "hidden", NULL);
    log_msg(&lg, LOG_WARN, "shown", "k", "v\"q", NULL);
    fclose(f);
    CHECK(strstr(out, "hidden") == NULL);
    CHECK(strstr(out, "\"level\":\"warn\"") && strstr(out, "\"msg\":\"shown\""));
    CHECK(strstr(out, "\"k\":\"v\\\"q\"") != NULL);
    CHECK(out[strlen(out) - 1] == '\n');

    /* control bytes, DEL and an overlong value: still one line of JSON, read back as
     * written up to where the line had to end */
    static char big[LOG_LINE_MAX * 2];
    memset(big, 'v', sizeof(big) - 1);
    memcpy(big + 100, "\t\r\x01\x7f\"", 5);
    static char line[LOG_LINE_MAX + 64];
    f = fmemopen(line, sizeof(line), "w");
    struct logger lg2 = {LOG_INFO, f};
    log_msg(&lg2, LOG_ERROR, "m\n", "k", big, NULL);
    fclose(f);
    char *nl = strchr(line, '\n');
    CHECK(nl && nl[1] == '\0' && (size_t)(nl - line) < LOG_LINE_MAX);
    json_error_t err;
    json_t *v = json_loads(line, 0, &err);
    const char *k = json_string_value(json_object_get(v, "k"));
    CHECK(k && strlen(k) > 3000 && strncmp(k, big, strlen(k)) == 0);
    CHECK(json_is_string(json_object_get(v, "msg")) &&
          strcmp(json_string_value(json_object_get(v, "msg")), "m\n") == 0);
    json_decref(v);
    enum log_level lvl;
    CHECK(log_level_parse("Error", &lvl) == 0 && lvl == LOG_ERROR);
    CHECK(log_level_parse("verbose", &lvl) == -1);
    check_ts();
    check_int();
    check_trace();
    return unit_done();
}
