#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "steward/cursor.h"
#include "steward/json.h"
#include "unit.h"

static const char *first_field(json_t *errs)
{
    return json_string_value(json_object_get(json_array_get(errs, 0), "field"));
}

/* jtime_format as it was before it was written by hand (gmtime_r and snprintf): the
 * reference the new one must match character for character. */
static void ref_format(int64_t us, char *out)
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    char tmp[96];
    int n = snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (n < 0 || n > 19)
        n = 19;
    if (frac)
        snprintf(tmp + n, sizeof(tmp) - (size_t)n, ".%06lldZ", (long long)frac);
    else
        snprintf(tmp + n, sizeof(tmp) - (size_t)n, "Z");
    size_t len = strnlen(tmp, 31);
    memcpy(out, tmp, len);
    out[len] = '\0';
}

struct fmt_check {
    long count;
    long mismatches;
    int64_t first_bad;
};

static void fmt_one(struct fmt_check *fc, int64_t us)
{
    char got[32], want[32];
    memset(got, 'x', sizeof(got));
    jtime_format(us, got);
    ref_format(us, want);
    fc->count++;
    if (strcmp(got, want) != 0 && fc->mismatches++ == 0) {
        fc->first_bad = us;
        printf("# jtime_format(%lld): got %s, want %s\n", (long long)us, got, want);
    }
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The hand-written formatter against the snprintf one over every day of 1899..2100
 * (leap years, 1900 and 2100 that are not, 2000 that is), the turn of every year and
 * the end of every February of -1000..12000, values around zero, the extremes of
 * int64, and random values (with negative and zero microseconds). */
static void check_time_format(void)
{
    const int64_t day = 86400LL * 1000000;
    const int64_t offsets[] = {0, 1, 999999, 1000000, 43200500000LL, day - 1000000, day - 1};
    struct fmt_check days = {0}, turns = {0}, edges = {0}, random = {0};
    int64_t from = -2240524800LL * 1000000; /* 1899-01-01 */
    int64_t to = 4133980800LL * 1000000;    /* 2101-01-01 */
    for (int64_t d = from; d < to; d += day)
        for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++)
            fmt_one(&days, d + offsets[i]);
    for (int y = -1000; y <= 12000; y++) {
        struct tm jan = {.tm_year = y - 1900, .tm_mon = 0, .tm_mday = 1};
        struct tm mar = {.tm_year = y - 1900, .tm_mon = 2, .tm_mday = 1};
        int64_t j = (int64_t)timegm(&jan) * 1000000, m = (int64_t)timegm(&mar) * 1000000;
        const int64_t near[] = {-day, -1000001, -1000000, -1, 0, 1, 999999, 1000000};
        for (size_t i = 0; i < sizeof(near) / sizeof(near[0]); i++) {
            fmt_one(&turns, j + near[i]);
            fmt_one(&turns, m + near[i]); /* Feb 28/29 -> Mar 1 */
        }
    }
    for (int64_t us = -3000000; us <= 3000000; us += 250000)
        fmt_one(&edges, us);
    const int64_t extremes[] = {INT64_MIN, INT64_MIN + 1, INT64_MIN + 999999, INT64_MAX,
                                INT64_MAX - 1, INT64_MAX - 999999, 253402300799999999LL,
                                253402300800000000LL, -62135596800000000LL,
                                -62135596800000001LL, -62167219200000000LL,
                                -62167219200000001LL};
    for (size_t i = 0; i < sizeof(extremes) / sizeof(extremes[0]); i++)
        fmt_one(&edges, extremes[i]);
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 100000; i++) {
        fmt_one(&random, (int64_t)next_rand(&seed)); /* any int64 */
        /* year 0000..9999, half of them on a whole second */
        int64_t us = (int64_t)(next_rand(&seed) % 315569520000000000ULL) - 62167219200000000LL;
        fmt_one(&random, i % 2 ? us - us % 1000000 : us);
        fmt_one(&random, (int64_t)(next_rand(&seed) % 200000000001ULL) - 100000000000LL);
    }
    CHECK(days.count == 73779 * 7 && days.mismatches == 0);
    CHECK(turns.count == 13001 * 16 && turns.mismatches == 0);
    CHECK(edges.count == 37 && edges.mismatches == 0);
    CHECK(random.count == 300000 && random.mismatches == 0);
}

/* json_text of the parse of in equals want. */
static void text_is(const char *in, const char *want)
{
    json_t *v = json_loads(in, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    char *t = v ? json_text(v, NULL) : NULL;
    unit_check(t && strcmp(t, want) == 0, want, __FILE__, __LINE__);
    if (t && strcmp(t, want) != 0)
        fprintf(stderr, "# json_text(%s) = %s\n", in, t);
    free(t);
    json_decref(v);
}

static void test_text(void)
{
    text_is("0.975", "0.975");
    text_is("3.132", "3.132");
    text_is("[0.1, 0.30000000000000004, 2.0, -0.0, 1e300, 5e-324, 1.7976931348623157e308]",
            "[0.1,0.30000000000000004,2.0,-0.0,1e+300,5e-324,"
            "1.7976931348623157e+308]");
    text_is("{\"z\": 1, \"a\": {\"y\": true, \"b\": null}, \"m\": [\"x\\n\\u0001\"]}",
            "{\"z\":1,\"a\":{\"y\":true,\"b\":null},\"m\":[\"x\\n\\u0001\"]}");
    text_is("\"a\\u0000b\"", "\"a\\u0000b\"");
    text_is("-9223372036854775808", "-9223372036854775808");
    /* every double of a random sample reads back as itself */
    uint64_t seed = 0x2545F4914F6CDD1DULL;
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        uint64_t bits = next_rand(&seed);
        double d;
        memcpy(&d, &bits, sizeof(d));
        if (!isfinite(d))
            continue;
        json_t *r = json_real(d);
        char *t = json_text(r, NULL);
        if (!t || strtod(t, NULL) != d)
            bad++;
        free(t);
        json_decref(r);
    }
    CHECK(bad == 0);
    CHECK(json_text(NULL, NULL) == NULL);
}

int main(void)
{
    test_text();
    char err[200];
    json_t *v = jv_parse("{\"a\": 1,\n \"b\": }", 17, err, sizeof(err));
    CHECK(v == NULL);
    CHECK(strstr(err, "line 2") != NULL && strstr(err, "column") != NULL);
    CHECK(jv_parse("{\"a\":1,\"a\":2}", 13, err, sizeof(err)) == NULL);
    CHECK(jv_parse("\"\\u0000\"", 8, err, sizeof(err)) == NULL);
    CHECK(jv_parse("\"\xff\"", 3, err, sizeof(err)) == NULL);

    json_t *obj = json_pack("{s:s, s:i, s:s, s:b, s:f, s:o}", "name", "héllo", "n", 5, "slug",
                            "Bad-Slug", "flag", 1, "x", 1.5, "obj", json_object());
    json_t *errs = json_array();
    const char *s;
    CHECK(jv_string(obj, "name", "", true, 1, 5, &s, errs) == 1 && strcmp(s, "héllo") == 0);
    CHECK(jv_string(obj, "name", "", true, 1, 4, &s, errs) == -1);
    CHECK_STR(first_field(errs), "name");
    json_array_clear(errs);
    CHECK(jv_string(obj, "missing", "p", true, 1, 4, &s, errs) == 0);
    CHECK_STR(first_field(errs), "p.missing");
    json_array_clear(errs);
    CHECK(jv_string(obj, "missing", "", false, 1, 4, &s, errs) == 0 && json_array_size(errs) == 0);
    CHECK(jv_string(obj, "n", "", true, 1, 4, &s, errs) == -1);
    json_array_clear(errs);

    long long n;
    CHECK(jv_int(obj, "n", "", true, 0, 10, &n, errs) == 1 && n == 5);
    CHECK(jv_int(obj, "n", "", true, 6, 10, &n, errs) == -1);
    CHECK(jv_int(obj, "x", "", true, 0, 10, &n, errs) == -1);
    CHECK(json_array_size(errs) == 2);
    json_array_clear(errs);
    CHECK(jv_slug(obj, "slug", "", true, &s, errs) == -1);
    bool b;
    CHECK(jv_bool(obj, "flag", "", true, &b, errs) == 1 && b);
    double d;
    CHECK(jv_number(obj, "x", "", true, &d, errs) == 1 && d == 1.5);
    json_t *o;
    CHECK(jv_object(obj, "obj", "", true, &o, errs) == 1);
    CHECK(jv_object(obj, "n", "", true, &o, errs) == -1);
    json_array_clear(errs);

    static const char *const allowed[] = {"name", "n", NULL};
    jv_unknown_fields(obj, allowed, "body", errs);
    CHECK(json_array_size(errs) == 4);
    json_decref(errs);
    json_decref(obj);

    CHECK(jv_is_slug("gate_failure") && jv_is_slug("a") && jv_is_slug("x9_"));
    CHECK(!jv_is_slug("") && !jv_is_slug("Gate") && !jv_is_slug("a-b") && !jv_is_slug("a b"));
    char long_slug[70];
    memset(long_slug, 'a', 65);
    long_slug[65] = '\0';
    CHECK(!jv_is_slug(long_slug));
    long_slug[64] = '\0';
    CHECK(jv_is_slug(long_slug));
    CHECK(jv_is_printable_id("user-1", 128) && !jv_is_printable_id("a\nb", 128));
    CHECK(!jv_is_printable_id("", 128));

    int64_t us;
    CHECK(jtime_parse("2026-11-22T10:00:00Z", &us) == 0 && us == 1795341600LL * 1000000);
    char buf[32];
    jtime_format(us, buf);
    CHECK_STR(buf, "2026-11-22T10:00:00Z");
    CHECK(jtime_parse("2026-11-22T11:30:00+01:30", &us) == 0 && us == 1795341600LL * 1000000);
    CHECK(jtime_parse("2026-11-22T10:00:00.5Z", &us) == 0 && us % 1000000 == 500000);
    jtime_format(us, buf);
    CHECK_STR(buf, "2026-11-22T10:00:00.500000Z");
    CHECK(jtime_parse("2024-02-29T00:00:00Z", &us) == 0);
    CHECK(jtime_parse("2023-02-29T00:00:00Z", &us) == -1);
    CHECK(jtime_parse("2026-13-01T00:00:00Z", &us) == -1);
    CHECK(jtime_parse("2026-11-22 10:00:00Z", &us) == -1);
    CHECK(jtime_parse("2026-11-22T10:00:00", &us) == -1);
    CHECK(jtime_parse("2026-11-22T24:00:00Z", &us) == -1);
    CHECK(jtime_parse("2026-11-22T10:00:00Zjunk", &us) == -1);
    CHECK(jtime_parse("yesterday", &us) == -1);
    CHECK(jtime_parse("1969-12-31T23:59:59Z", &us) == 0 && us == -1000000);
    jtime_format(-1, buf);
    CHECK_STR(buf, "1969-12-31T23:59:59.999999Z");
    jtime_format(951782400LL * 1000000, buf);
    CHECK_STR(buf, "2000-02-29T00:00:00Z");
    jtime_format(4107542400LL * 1000000 - 1, buf);
    CHECK_STR(buf, "2100-02-28T23:59:59.999999Z");
    jtime_format(-62135596800LL * 1000000, buf);
    CHECK_STR(buf, "0001-01-01T00:00:00Z");
    jtime_format(253402300799999999LL, buf);
    CHECK_STR(buf, "9999-12-31T23:59:59.999999Z");
    check_time_format();

    char cur[CURSOR_LEN];
    int64_t a, c;
    cursor_encode(cur, 1795341600000000LL, 42);
    CHECK(cursor_decode(cur, &a, &c) == 0 && a == 1795341600000000LL && c == 42);
    CHECK(cursor_decode("nope", &a, &c) == -1);
    CHECK(cursor_decode("c0000000000000000000000000000000g", &a, &c) == -1);
    return unit_done();
}
