#include <stdint.h>
#include <string.h>

#include "steward/cursor.h"
#include "steward/json.h"
#include "unit.h"

static const char *first_field(json_t *errs)
{
    return json_string_value(json_object_get(json_array_get(errs, 0), "field"));
}

int main(void)
{
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
    CHECK(jv_utf8_len("héllo") == 5);
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

    char cur[CURSOR_LEN];
    int64_t a, c;
    cursor_encode(cur, 1795341600000000LL, 42);
    CHECK(cursor_decode(cur, &a, &c) == 0 && a == 1795341600000000LL && c == 42);
    CHECK(cursor_decode("nope", &a, &c) == -1);
    CHECK(cursor_decode("c0000000000000000000000000000000g", &a, &c) == -1);
    return unit_done();
}
