#include "steward/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/buf.h"
#include "steward/clock.h"
#include "steward/jsonw.h"
#include "steward/utf8.h"

json_t *jv_parse(const char *buf, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!v)
        snprintf(err, errlen, "%s at line %d, column %d", je.text, je.line, je.column);
    return v;
}

void jv_error(json_t *errs, const char *field, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_array_append_new(errs, json_pack("{s:s, s:s}", "field", field, "message", msg));
}

const char *jv_path(char *buf, size_t cap, const char *prefix, const char *key)
{
    if (prefix && *prefix)
        snprintf(buf, cap, "%s.%s", prefix, key);
    else
        snprintf(buf, cap, "%s", key);
    return buf;
}

void jv_unknown_fields(const json_t *obj, const char *const *allowed, const char *prefix,
                       json_t *errs)
{
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++) {
            if (strcmp(*a, key) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            char path[192];
            jv_error(errs, jv_path(path, sizeof(path), prefix, key), "unknown field");
        }
    }
}

/* Looks the key up; returns 0 when absent/null (adding "is required" if needed). */
static int lookup(const json_t *obj, const char *key, const char *prefix, bool required,
                  json_t **out, json_t *errs, char *path, size_t cap)
{
    jv_path(path, cap, prefix, key);
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            jv_error(errs, path, "is required");
        return 0;
    }
    *out = v;
    return 1;
}

bool jv_is_slug(const char *s)
{
    size_t n = 0;
    for (; *s; s++, n++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return n >= 1 && n <= 64;
}

bool jv_is_printable_id(const char *s, size_t max_chars)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    size_t n = utf8_count(s); /* jansson's strings are well formed */
    return n >= 1 && n <= max_chars;
}

int jv_string(const json_t *obj, const char *key, const char *prefix, bool required,
              size_t min_chars, size_t max_chars, const char **out, json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_string(v)) {
        jv_error(errs, path, "must be a string");
        return -1;
    }
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        jv_error(errs, path, "must not contain NUL characters");
        return -1;
    }
    size_t n = utf8_count(s);
    if (n < min_chars || n > max_chars) {
        jv_error(errs, path, "must be %zu to %zu characters", min_chars, max_chars);
        return -1;
    }
    *out = s;
    return 1;
}

int jv_slug(const json_t *obj, const char *key, const char *prefix, bool required,
            const char **out, json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_string(v) || !jv_is_slug(json_string_value(v)) ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        jv_error(errs, path, "must match ^[a-z0-9_]{1,64}$");
        return -1;
    }
    *out = json_string_value(v);
    return 1;
}

int jv_int(const json_t *obj, const char *key, const char *prefix, bool required, long long min,
           long long max, long long *out, json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_integer(v)) {
        jv_error(errs, path, "must be an integer");
        return -1;
    }
    long long n = json_integer_value(v);
    if (n < min) {
        jv_error(errs, path, "must be >= %lld", min);
        return -1;
    }
    if (n > max) {
        jv_error(errs, path, "must be <= %lld", max);
        return -1;
    }
    *out = n;
    return 1;
}

int jv_number(const json_t *obj, const char *key, const char *prefix, bool required,
              double *out, json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_number(v) || !isfinite(json_number_value(v))) {
        jv_error(errs, path, "must be a finite number");
        return -1;
    }
    *out = json_number_value(v);
    return 1;
}

int jv_bool(const json_t *obj, const char *key, const char *prefix, bool required, bool *out,
            json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_boolean(v)) {
        jv_error(errs, path, "must be a boolean");
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

int jv_object(const json_t *obj, const char *key, const char *prefix, bool required,
              json_t **out, json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_object(v)) {
        jv_error(errs, path, "must be an object");
        return -1;
    }
    *out = v;
    return 1;
}

int jv_time(const json_t *obj, const char *key, const char *prefix, bool required, int64_t *us,
            json_t *errs)
{
    char path[192];
    json_t *v;
    if (!lookup(obj, key, prefix, required, &v, errs, path, sizeof(path)))
        return 0;
    if (!json_is_string(v) || jtime_parse(json_string_value(v), us) != 0) {
        jv_error(errs, path, "must be an RFC 3339 date-time such as 2026-11-22T10:00:00Z");
        return -1;
    }
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

int jtime_parse(const char *s, int64_t *us)
{
    int y, mo, d, h, mi, sec;
    if (strlen(s) < 20 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) ||
        s[7] != '-' || digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
        digits(s + 17, 2, &sec))
        return -1;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
        sec > 59)
        return -1;
    const char *p = s + 19;
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9') {
            if (n < 6)
                frac = frac * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0)
            return -1;
        for (; n < 6; n++)
            frac *= 10;
    }
    int64_t offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset = (int64_t)(oh * 60 + om) * 60 * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return -1;
    }
    if (*p)
        return -1;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
    *us = secs * 1000000 + frac;
    return 0;
}

/* Proleptic Gregorian date of a day count since 1970-01-01: the inverse of
 * days_from_civil, by the same 400-year-era decomposition. */
static void civil_from_days(int64_t days, int64_t *y, int *m, int *d)
{
    days += 719468; /* days from 0000-03-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t doe = days - era * 146097;                                     /* 0..146096 */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* 0..399 */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* 0..365 */
    int64_t mp = (5 * doy + 2) / 153;                                    /* 0 = March */
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static char *put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
    return p + 2;
}

/* The year as printf's "%04d" writes it: at least 4 characters, zero-padded after a
 * minus sign ("0042", "-001", "12345"). */
static char *put_year(char *p, int64_t y)
{
    char digits[24];
    int n = 0;
    uint64_t v = y < 0 ? (uint64_t)0 - (uint64_t)y : (uint64_t)y;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    int width = y < 0 ? 3 : 4;
    if (y < 0)
        *p++ = '-';
    for (int i = n; i < width; i++)
        *p++ = '0';
    while (n)
        *p++ = digits[--n];
    return p;
}

/* Written by hand rather than with gmtime_r and snprintf, which cost about 3% of the
 * CPU of a bond read (three timestamps per response). The output is the same as
 * theirs for every int64 input. */
size_t jtime_format_secs(int64_t secs, char *out)
{
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days -= 1;
    }
    int64_t y;
    int mo, d;
    civil_from_days(days, &y, &mo, &d);
    char *p = put_year(out, y);
    *p++ = '-';
    p = put2(p, mo);
    *p++ = '-';
    p = put2(p, d);
    *p++ = 'T';
    p = put2(p, (int)(sod / 3600));
    *p++ = ':';
    p = put2(p, (int)(sod / 60 % 60));
    *p++ = ':';
    p = put2(p, (int)(sod % 60));
    *p = '\0';
    return (size_t)(p - out);
}

void jtime_format(int64_t us, char *out)
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    char tmp[48];
    size_t n = jtime_format_secs(secs, tmp);
    if (n > 19)
        n = 19; /* years past 9999 are outside what jtime_parse accepts */
    char *p = tmp + n;
    if (frac) {
        *p++ = '.';
        for (int i = 5; i >= 0; i--) {
            p[i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        p += 6;
    }
    *p++ = 'Z';
    *p = '\0';
    memcpy(out, tmp, (size_t)(p - tmp) + 1);
}

json_t *jtime_json(int64_t us)
{
    char buf[32];
    jtime_format(us, buf);
    return json_string(buf);
}

int64_t jtime_now_us(void)
{
    return clock_wall_us();
}

/* ------------------------------------------------------------------ writing */

static bool write_value(struct buf *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        buf_append(b, "{", 1);
        const char *key;
        json_t *val;
        bool first = true;
        void *it = json_object_iter((json_t *)v);
        while (it) {
            key = json_object_iter_key(it);
            val = json_object_iter_value(it);
            if (!first)
                buf_append(b, ",", 1);
            first = false;
            jsonw_strn(b, key, json_object_iter_key_len(it));
            buf_append(b, ":", 1);
            if (!write_value(b, val))
                return false;
            it = json_object_iter_next((json_t *)v, it);
        }
        buf_append(b, "}", 1);
        return true;
    }
    case JSON_ARRAY: {
        buf_append(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                buf_append(b, ",", 1);
            if (!write_value(b, json_array_get(v, i)))
                return false;
        }
        buf_append(b, "]", 1);
        return true;
    }
    case JSON_STRING:
        jsonw_strn(b, json_string_value(v), json_string_length(v));
        return true;
    case JSON_INTEGER:
        buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return true;
    case JSON_REAL: {
        double d = json_real_value(v);
        if (!isfinite(d))
            return false;
        size_t at = b->len;
        jsonw_num(b, d);
        /* keep it a real when read back: "2" -> "2.0" (not for "1e+20") */
        if (!b->oom && !memchr(b->data + at, '.', b->len - at) &&
            !memchr(b->data + at, 'e', b->len - at))
            buf_append(b, ".0", 2);
        return true;
    }
    case JSON_TRUE:
        buf_append(b, "true", 4);
        return true;
    case JSON_FALSE:
        buf_append(b, "false", 5);
        return true;
    case JSON_NULL:
        buf_append(b, "null", 4);
        return true;
    }
    return false;
}

char *json_text(const json_t *v, size_t *len)
{
    if (!v)
        return NULL;
    struct buf b = {0};
    if (!write_value(&b, v) || b.oom) {
        buf_release(&b);
        return NULL;
    }
    size_t n = 0;
    char *text = buf_detach(&b, &n);
    if (len)
        *len = n;
    return text;
}
