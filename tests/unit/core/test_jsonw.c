/* The hand-written JSON text of steward/jsonw.h: exact escapes, agreement with a JSON
 * parser for every ASCII byte, truncation in a fixed buffer and number text. */
#include <jansson.h>
#include <string.h>

#include "steward/buf.h"
#include "steward/jsonw.h"
#include "unit.h"

static int text_is(struct buf *b, const char *want)
{
    int ok = b->data && strcmp(b->data, want) == 0;
    buf_release(b);
    return ok;
}

static void strings(void)
{
    struct buf b = {0};
    jsonw_str(&b, "plain");
    CHECK(text_is(&b, "\"plain\""));
    jsonw_str(&b, "q\"b\\n\nt\tc\x01 \xc3\xa9");
    CHECK(text_is(&b, "\"q\\\"b\\\\n\\nt\\tc\\u0001 \xc3\xa9\""));
    jsonw_str(&b, "");
    CHECK(text_is(&b, "\"\""));
    jsonw_str(&b, "\r\x1f\x7f/'");
    CHECK(text_is(&b, "\"\\r\\u001f\\u007f/'\""));
    jsonw_str(&b, "\\");
    CHECK(text_is(&b, "\"\\\\\""));
    /* appends after what is there */
    buf_append(&b, "[", 1);
    jsonw_str(&b, "a");
    buf_append(&b, ",", 1);
    jsonw_str(&b, "\x02");
    buf_append(&b, "]", 1);
    CHECK(text_is(&b, "[\"a\",\"\\u0002\"]"));
}

/* Every ASCII byte, with multi-byte UTF-8 between them: a JSON parser reads back the
 * string written, from both writers. */
static void round_trip(void)
{
    char in[400];
    size_t n = 0;
    for (int c = 1; c < 128; c++) {
        in[n++] = (char)c;
        if (c % 16 == 0) {
            memcpy(in + n, "\xe2\x82\xac", 3); /* the euro sign */
            n += 3;
        }
    }
    in[n] = '\0';

    struct buf b = {0};
    jsonw_str(&b, in);
    json_error_t err;
    json_t *v = b.data ? json_loads(b.data, JSON_DECODE_ANY, &err) : NULL;
    CHECK(json_is_string(v) && strcmp(json_string_value(v), in) == 0);
    json_decref(v);

    char fixed[1200] = "\"";
    size_t len = jsonw_escape(fixed, 1, sizeof(fixed) - 1, in);
    CHECK(len < sizeof(fixed) - 2);
    fixed[len] = '"';
    fixed[len + 1] = '\0';
    CHECK(b.data && strcmp(fixed, b.data) == 0); /* the same text from both */
    buf_release(&b);
}

static void fixed_buffer(void)
{
    char buf[64];
    size_t n = jsonw_escape(buf, 0, sizeof(buf), "a\"b\\c\nd\x01");
    CHECK(n == strlen("a\\\"b\\\\c\\nd\\u0001"));
    CHECK_STR(buf, "a\\\"b\\\\c\\nd\\u0001");

    /* appends at len */
    memcpy(buf, "xy", 2);
    n = jsonw_escape(buf, 2, sizeof(buf), "\t");
    CHECK(n == 4);
    CHECK_STR(buf, "xy\\t");

    char small[8];
    n = jsonw_escape(small, 0, sizeof(small), "0123456789");
    CHECK(n == 7 && small[7] == '\0');
    CHECK_STR(small, "0123456");

    /* an escape that does not fit whole is left out, and nothing after it follows */
    n = jsonw_escape(small, 0, sizeof(small), "abcd\x01z");
    CHECK(n == 4);
    CHECK_STR(small, "abcd");
    n = jsonw_escape(small, 0, sizeof(small), "abcde\"z");
    CHECK(n == 7);
    CHECK_STR(small, "abcde\\\"");
    n = jsonw_escape(small, 0, sizeof(small), "abcdef\"z");
    CHECK(n == 6);
    CHECK_STR(small, "abcdef");
}

static void numbers(void)
{
    struct buf b = {0};
    jsonw_num(&b, 0.85);
    CHECK(text_is(&b, "0.85"));
    jsonw_num(&b, 0.1235);
    CHECK(text_is(&b, "0.1235"));
    jsonw_num(&b, 1.0);
    CHECK(text_is(&b, "1"));
    jsonw_num(&b, 0.1 + 0.2); /* needs 17 digits to read back */
    CHECK(text_is(&b, "0.30000000000000004"));
    jsonw_num(&b, -2.5e-7);
    CHECK(text_is(&b, "-2.5e-07"));
}

int main(void)
{
    strings();
    round_trip();
    fixed_buffer();
    numbers();
    return unit_done();
}
