#include "steward/log.h"

#include "log_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "steward/buf.h"
#include "steward/clock.h"
#include "steward/json.h"
#include "steward/jsonw.h"
#include "steward/jsonw.h"

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* The calling thread's request context (log.h): set and restored by the transports. */
static _Thread_local const struct log_scope *tl_scope;

const struct log_scope *log_scope_set(const struct log_scope *scope)
{
    const struct log_scope *prev = tl_scope;
    tl_scope = scope;
    return prev;
}

/* n lowercase hex digits, not all zero */
static bool hex_field(const char *s, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        nonzero |= c != '0';
    }
    return nonzero;
}

int log_traceparent_parse(const char *v, char *trace_id, char *canon)
{
    if (!v)
        return -1;
    size_t n = strnlen(v, 56);
    if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return -1;
    bool v00 = v[0] == '0' && v[1] == '0';
    if (!(hex_field(v, 2) || v00) || (v[0] == 'f' && v[1] == 'f'))
        return -1;
    if ((v00 && n != 55) || (!v00 && n > 55 && v[55] != '-'))
        return -1;
    if (!hex_field(v + 3, 32) || !hex_field(v + 36, 16) ||
        !(hex_field(v + 53, 2) || (v[53] == '0' && v[54] == '0')))
        return -1;
    memcpy(trace_id, v + 3, LOG_TRACE_ID_LEN);
    trace_id[LOG_TRACE_ID_LEN] = '\0';
    memcpy(canon, "00", 2);
    memcpy(canon + 2, v + 2, 53);
    canon[55] = '\0';
    return 0;
}

int log_level_parse(const char *s, enum log_level *out)
{
    if (strcasecmp(s, "debug") == 0)
        *out = LOG_DEBUG;
    else if (strcasecmp(s, "info") == 0)
        *out = LOG_INFO;
    else if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
        *out = LOG_WARN;
    else if (strcasecmp(s, "error") == 0)
        *out = LOG_ERROR;
    else
        return -1;
    return 0;
}

char *log_fmt_int(char *out, long long val)
{
    char digits[24];
    int n = 0;
    unsigned long long v = val < 0 ? 0ULL - (unsigned long long)val : (unsigned long long)val;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    char *p = out;
    if (val < 0)
        *p++ = '-';
    while (n)
        *p++ = digits[--n];
    *p = '\0';
    return out;
}

static void put_raw(struct log_line *l, const char *s)
{
    size_t n = strlen(s);
    if (l->len + n >= sizeof(l->buf) - 2)
        n = sizeof(l->buf) - 2 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    l->buf[l->len] = '\0';
}

static void put_key(struct log_line *l, const char *key)
{
    put_raw(l, ",\"");
    l->len = jsonw_escape(l->buf, l->len, sizeof(l->buf) - 2, key);
    put_raw(l, "\":");
}

void log_begin(struct log_line *l, const struct logger *lg, enum log_level lvl, const char *msg)
{
    l->lg = lg;
    l->enabled = lg && lvl >= lg->level;
    l->len = 0;
    if (!l->enabled)
        return;
    int64_t now_us = clock_wall_us();
    /* by hand, not gmtime_r + snprintf: a third of the cost of an access line */
    char stamp[40];
    size_t n = jtime_format_secs(now_us / 1000000, stamp);
    long ms = (long)(now_us % 1000000 / 1000);
    stamp[n++] = '.';
    stamp[n++] = (char)('0' + ms / 100);
    stamp[n++] = (char)('0' + ms / 10 % 10);
    stamp[n++] = (char)('0' + ms % 10);
    stamp[n++] = 'Z';
    stamp[n] = '\0';
    put_raw(l, "{\"ts\":\"");
    put_raw(l, stamp);
    put_raw(l, "\",\"level\":\"");
    put_raw(l, level_names[lvl]);
    put_raw(l, "\",\"msg\":\"");
    l->len = jsonw_escape(l->buf, l->len, sizeof(l->buf) - 2, msg ? msg : "");
    put_raw(l, "\"");
    if (tl_scope && tl_scope->trace_id[0]) {
        put_raw(l, ",\"trace_id\":\""); /* 32 lowercase hex digits: nothing to escape */
        put_raw(l, tl_scope->trace_id);
        put_raw(l, "\"");
    }
}

void log_str(struct log_line *l, const char *key, const char *val)
{
    if (!l->enabled)
        return;
    put_key(l, key);
    if (!val) {
        put_raw(l, "null");
        return;
    }
    put_raw(l, "\"");
    l->len = jsonw_escape(l->buf, l->len, sizeof(l->buf) - 3, val);
    put_raw(l, "\"");
}

void log_int(struct log_line *l, const char *key, long long val)
{
    if (!l->enabled)
        return;
    char num[24];
    log_fmt_int(num, val);
    put_key(l, key);
    put_raw(l, num);
}

void log_dbl(struct log_line *l, const char *key, double val)
{
    if (!l->enabled)
        return;
    char num[40];
    if (isfinite(val)) {
        /* the shortest text that reads back as val, as everywhere else */
        struct buf b = {0};
        jsonw_num(&b, val);
        snprintf(num, sizeof(num), "%s", b.data && !b.oom ? b.data : "null");
        buf_release(&b);
    } else
        snprintf(num, sizeof(num), "null");
    put_key(l, key);
    put_raw(l, num);
}

void log_end(struct log_line *l)
{
    if (!l->enabled)
        return;
    l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    fwrite(l->buf, 1, l->len, l->lg->out ? l->lg->out : stderr);
    fflush(l->lg->out ? l->lg->out : stderr);
}

void log_msg(const struct logger *lg, enum log_level lvl, const char *msg, ...)
{
    struct log_line l;
    log_begin(&l, lg, lvl, msg);
    if (!l.enabled)
        return;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        log_str(&l, k, v);
    }
    va_end(ap);
    log_end(&l);
}
