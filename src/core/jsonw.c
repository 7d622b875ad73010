#include "steward/jsonw.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* True when byte c is written escaped. */
static int needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\' || c == 0x7F;
}

/* The escape of c (for which needs_escape holds) into esc; returns its length. */
static size_t escape(unsigned char c, char esc[6])
{
    static const char hex[] = "0123456789abcdef";
    esc[0] = '\\';
    switch (c) {
    case '"':
    case '\\':
        esc[1] = (char)c;
        return 2;
    case '\n':
        esc[1] = 'n';
        return 2;
    case '\r':
        esc[1] = 'r';
        return 2;
    case '\t':
        esc[1] = 't';
        return 2;
    default:
        memcpy(esc + 1, "u00", 3);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 0xF];
        return 6;
    }
}

void jsonw_str(struct buf *out, const char *s)
{
    buf_append(out, "\"", 1);
    const char *run = s;
    for (const char *p = s; *p; p++) {
        if (!needs_escape((unsigned char)*p))
            continue;
        char esc[6];
        size_t n = escape((unsigned char)*p, esc);
        buf_append(out, run, (size_t)(p - run));
        buf_append(out, esc, n);
        run = p + 1;
    }
    buf_append(out, run, strlen(run));
    buf_append(out, "\"", 1);
}

void jsonw_strn(struct buf *out, const char *s, size_t len)
{
    buf_append(out, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        if (!needs_escape((unsigned char)s[i]))
            continue;
        char esc[6];
        size_t n = escape((unsigned char)s[i], esc);
        buf_append(out, s + run, i - run);
        buf_append(out, esc, n);
        run = i + 1;
    }
    buf_append(out, s + run, len - run);
    buf_append(out, "\"", 1);
}

size_t jsonw_escape(char *buf, size_t len, size_t cap, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[6];
        size_t n = 1;
        if (needs_escape(*p))
            n = escape(*p, esc);
        else
            esc[0] = (char)*p;
        if (len + n >= cap)
            break;
        memcpy(buf + len, esc, n);
        len += n;
    }
    buf[len < cap ? len : cap - 1] = '\0';
    return len;
}

void jsonw_num(struct buf *out, double v)
{
    char text[40];
    /* a decimal of up to DBL_DIG (15) digits survives a round trip, so when one of those
     * reads back as v, %.15g (which drops trailing zeros) is already the shortest; only
     * subnormals, with fewer digits of precision, need the search from 1 */
    int from = v != 0 && fabs(v) < DBL_MIN ? 1 : DBL_DIG;
    for (int prec = from; prec <= 17; prec++) {
        snprintf(text, sizeof(text), "%.*g", prec, v);
        if (strtod(text, NULL) == v)
            break;
    }
    buf_append(out, text, strlen(text));
}
