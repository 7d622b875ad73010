/* The pure part of the bond ledger: rounding, note and detail formats, truncation by
 * characters and the rate-limit rule (the JSON text helpers are core/test_jsonw.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "steward/bonds.h"
#include "bonds/bonds_int.h"
#include "steward/buf.h"
#include "unit.h"

static int text_is(struct buf *b, const char *want)
{
    int ok = b->data && strcmp(b->data, want) == 0;
    buf_release(b);
    return ok;
}

static void test_round4(void)
{
    /* decided on the exact binary value, unlike round(x * 1e4) / 1e4 */
    CHECK(bonds_round4(0.12345) == 0.1235);     /* binary value is just above ...45 */
    CHECK(bonds_round4(123.45675) == 123.4567); /* binary value is just below ...75 */
    CHECK(bonds_round4(0.00005) == 0.0001);
    CHECK(bonds_round4(2.00005) == 2.0);
    /* exact halves go to the even digit */
    CHECK(bonds_round4(0.03125) == 0.0312);
    CHECK(bonds_round4(0.09375) == 0.0938);
    CHECK(bonds_round4(0.15625) == 0.1562);
    CHECK(bonds_round4(-0.03125) == -0.0312);
    CHECK(bonds_round4(0.5) == 0.5);
    CHECK(bonds_round4(7.0) == 7.0);
    CHECK(bonds_round4(0.99995) == 1.0);
    CHECK(bonds_round4(1e300) == 1e300);
}

static void test_valid_id(void)
{
    CHECK(bonds_valid_id("user-42", 128));
    CHECK(bonds_valid_id("\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80", 128));
    CHECK(!bonds_valid_id("", 128));
    CHECK(!bonds_valid_id("tab\there", 128));
    CHECK(!bonds_valid_id("del\x7f", 128));
    CHECK(!bonds_valid_id("\xc2\x85", 128));     /* C1 control */
    /* the C1 range is U+0080..U+009F; U+00A0 follows it */
    CHECK(!bonds_valid_id("\xc2\x80", 128) && !bonds_valid_id("\xc2\x9f", 128));
    CHECK(bonds_valid_id("\xc2\xa0", 128));
    CHECK(!bonds_valid_id("\xf4\x90\x80\x80", 128));
    CHECK(!bonds_valid_id("\xc3", 128));         /* truncated sequence */
    CHECK(!bonds_valid_id("\xed\xa0\x80", 128)); /* surrogate */
    CHECK(!bonds_valid_id("\xc0\xaf", 128));     /* overlong */
    char id[130];
    memset(id, 'a', 128);
    id[128] = '\0';
    CHECK(bonds_valid_id(id, 128));
    id[128] = 'a';
    id[129] = '\0';
    CHECK(!bonds_valid_id(id, 128));
    /* the limit is in characters: 128 two-byte characters are fine */
    char wide[257];
    for (int i = 0; i < 128; i++) {
        wide[2 * i] = '\xc3';
        wide[2 * i + 1] = '\xa9';
    }
    wide[256] = '\0';
    CHECK(bonds_valid_id(wide, 128));
}

static void test_formats(void)
{
    struct buf b = {0};
    /* 2026-11-22T10:07:59.5Z */
    bonds_note_format(&b, 1795342079500000LL, "check in tomorrow");
    CHECK(text_is(&b, "[2026-11-22 10:07] check in tomorrow"));
    bonds_note_format(&b, 0, "x");
    CHECK(text_is(&b, "[1970-01-01 00:00] x"));

    bonds_detail_phase(&b, "dormant", "bonding");
    CHECK(text_is(&b, "dormant -> bonding"));
    bonds_detail_risk(&b, "low", "high");
    CHECK(text_is(&b, "risk: low -> high"));
    bonds_detail_cap(&b, 0, 25);
    CHECK(text_is(&b, "rate limit: 0 -> 25 msgs/day"));

    bonds_detail_note(&b, "short");
    CHECK(text_is(&b, "note added: short"));
    /* 150 characters of which the first 100 are kept, counted in characters */
    struct buf note = {0}, want = {0};
    for (int i = 0; i < 150; i++)
        buf_append(&note, i < 100 ? "\xc3\xa9" : "z", i < 100 ? 2 : 1);
    buf_append(&want, "note added: ", 12);
    for (int i = 0; i < 100; i++)
        buf_append(&want, "\xc3\xa9", 2);
    bonds_detail_note(&b, note.data);
    CHECK(text_is(&b, want.data));
    buf_release(&note);
    buf_release(&want);
}

static void test_rate_eval(void)
{
    const int64_t day = 86400LL * 1000000;
    const int64_t t0 = 1795356479000000LL;
    struct bonds_rate r;

    /* cap 0: unlimited, the stored count is reported as is */
    bonds_rate_eval(0, 37, t0 - 3 * day, t0, &r);
    CHECK(r.allowed && r.remaining == -1 && r.cap == 0 && r.count == 37);

    bonds_rate_eval(10, 3, t0 - 1000000, t0, &r);
    CHECK(r.allowed && r.remaining == 7 && r.cap == 10 && r.count == 3);
    CHECK(r.reset_in_s == 86400); /* 86399 s left, so after 86400 s it has reset */

    bonds_rate_eval(10, 10, t0, t0, &r);
    CHECK(!r.allowed && r.remaining == 0 && r.count == 10 && r.reset_in_s == 86401);

    /* a cap lowered below the count never reports a negative remaining */
    bonds_rate_eval(5, 9, t0, t0, &r);
    CHECK(!r.allowed && r.remaining == 0 && r.count == 9);

    /* exactly 86400 s is not more than 86400 s */
    bonds_rate_eval(10, 10, t0 - day, t0, &r);
    CHECK(!r.allowed && r.count == 10 && r.reset_in_s == 1);

    /* more than 86400 s: the count is 0 again */
    bonds_rate_eval(10, 10, t0 - day - 1000000, t0, &r);
    CHECK(r.allowed && r.remaining == 10 && r.count == 0 && r.reset_in_s == 86401);

    /* no message yet: no window runs, whenever the row was created */
    bonds_rate_eval(10, 0, t0 - day + 60 * 1000000LL, t0, &r);
    CHECK(r.allowed && r.remaining == 10 && r.count == 0 && r.reset_in_s == 86401);
}

static void test_etag_matches(void)
{
    const char *e = "\"2a-5f1c0e2d3b4a5-7\"";
    CHECK(bonds_etag_matches(e, e));
    CHECK(bonds_etag_matches("*", e));
    CHECK(bonds_etag_matches("\"x\", \"2a-5f1c0e2d3b4a5-7\"", e));
    CHECK(!bonds_etag_matches("\"2a-5f1c0e2d3b4a5-8\"", e));
    CHECK(!bonds_etag_matches("\"2a-5f1c0e2d3b4a5-7", e));
    CHECK(!bonds_etag_matches("W/\"2a-5f1c0e2d3b4a5-7\"", e)); /* If-Match compares strongly */
    CHECK(!bonds_etag_matches("", e));
}

int main(void)
{
    test_etag_matches();
    test_round4();
    test_valid_id();
    test_formats();
    test_rate_eval();
    return unit_done();
}
