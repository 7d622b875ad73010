/* The one UTF-8 decoder: well-formedness (RFC 3629), decoded code points, and the
 * character count and prefix of strings already known to be well formed. */
#include <stdint.h>
#include <string.h>

#include "steward/utf8.h"
#include "unit.h"

static bool valid(const char *s)
{
    return utf8_valid((const unsigned char *)s, strlen(s));
}

/* The length utf8_decode gives the sequence at s (of strlen(s) bytes); *cp gets the
 * code point, or stays 0xFFFFFFFF when the sequence is refused. */
static size_t decode(const char *s, uint32_t *cp)
{
    *cp = 0xFFFFFFFFu;
    return utf8_decode((const unsigned char *)s, strlen(s), cp);
}

static void test_valid(void)
{
    CHECK(utf8_valid((const unsigned char *)"", 0));
    CHECK(valid("{\"type\":\"device_hello\"}"));
    CHECK(valid("caf\xc3\xa9"));      /* U+00E9 */
    CHECK(valid("\xe2\x82\xac"));     /* U+20AC */
    CHECK(valid("\xf0\x9f\x98\x80")); /* U+1F600, a valid 4-byte form */
    CHECK(valid("\xed\x9f\xbf"));     /* U+D7FF, just below the surrogates */
    CHECK(valid("\xee\x80\x80"));     /* U+E000, just above them */
    CHECK(valid("\xf4\x8f\xbf\xbf")); /* U+10FFFF, the last code point */
    CHECK(valid("\xc2\x80"));         /* U+0080, the first two-byte form */
    CHECK(valid("\xe0\xa0\x80"));     /* U+0800, the first three-byte form */
    CHECK(valid("\xf0\x90\x80\x80")); /* U+10000, the first four-byte form */
    /* a NUL is a character (the JSON parser rejects it in a frame, not this) */
    CHECK(utf8_valid((const unsigned char *)"a\0b", 3));
    /* only n bytes are looked at */
    CHECK(utf8_valid((const unsigned char *)"ab\xff", 2));

    CHECK(!valid("\xff"));
    CHECK(!valid("{\"type\":\"x\"}\xff"));
    CHECK(!valid("{\"type\":\"\xc3\x28\"}")); /* bad continuation byte */
    CHECK(!valid("\x80"));                    /* lone continuation byte */
    CHECK(!valid("a\xbf"));
    CHECK(!valid("\xc0\xaf"));     /* overlong '/' */
    CHECK(!valid("\xc1\xbf"));     /* overlong two-byte */
    CHECK(!valid("\xe0\x9f\xbf")); /* overlong three-byte */
    CHECK(!valid("\xe0\x80\xaf"));
    CHECK(!valid("\xf0\x8f\xbf\xbf")); /* overlong four-byte */
    CHECK(!valid("\xf0\x80\x80\xaf"));
    CHECK(!valid("\xed\xa0\x80"));     /* U+D800, a surrogate */
    CHECK(!valid("\xed\xbf\xbf"));     /* U+DFFF */
    CHECK(!valid("\xf4\x90\x80\x80")); /* U+110000 */
    CHECK(!valid("\xf5\x80\x80\x80"));
    CHECK(!valid("\xf7\xbf\xbf\xbf"));     /* U+1FFFFF */
    CHECK(!valid("\xf8\x88\x80\x80\x80")); /* five-byte forms are gone */
    CHECK(!valid("\xc3"));                 /* truncated at the end */
    CHECK(!valid("\xe2\x82"));
    CHECK(!valid("\xf0\x9f\x98"));
    CHECK(!valid("\xe2\x82x")); /* truncated in the middle */
    CHECK(!valid("\xf0\x9f\x98\x28"));
    CHECK(!utf8_valid((const unsigned char *)"\xf0\x9f\x98\x80", 3)); /* cut by n */
}

static void test_decode(void)
{
    uint32_t cp;
    CHECK(decode("A", &cp) == 1 && cp == 0x41);
    CHECK(decode("\xc3\xa9", &cp) == 2 && cp == 0xE9);
    CHECK(decode("\xe2\x82\xac", &cp) == 3 && cp == 0x20AC);
    CHECK(decode("\xf0\x9f\x98\x80", &cp) == 4 && cp == 0x1F600);
    CHECK(decode("\xf4\x8f\xbf\xbf", &cp) == 4 && cp == 0x10FFFF);
    CHECK(decode("\xc2\x85x", &cp) == 2 && cp == 0x85); /* only the first sequence */
    CHECK(utf8_decode((const unsigned char *)"\0", 1, &cp) == 1 && cp == 0);
    CHECK(utf8_decode((const unsigned char *)"A", 0, &cp) == 0);

    CHECK(decode("\xc0\xaf", &cp) == 0 && cp == 0xFFFFFFFFu);
    CHECK(decode("\xe0\x9f\xbf", &cp) == 0);
    CHECK(decode("\xf0\x8f\xbf\xbf", &cp) == 0);
    CHECK(decode("\xed\xa0\x80", &cp) == 0);
    CHECK(decode("\xf4\x90\x80\x80", &cp) == 0);
    CHECK(decode("\xe2\x82", &cp) == 0);
    CHECK(decode("\x80", &cp) == 0);
    CHECK(utf8_decode((const unsigned char *)"\xe2\x82\xac", 2, &cp) == 0);
}

static void test_count_prefix(void)
{
    CHECK(utf8_count("") == 0);
    CHECK(utf8_count("h\xc3\xa9llo") == 5);
    CHECK(utf8_count("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80x") == 4);

    CHECK(utf8_prefix("abc", 2) == 2);
    CHECK(utf8_prefix("abc", 5) == 3);
    CHECK(utf8_prefix("abc", 0) == 0);
    CHECK(utf8_prefix("", 5) == 0);
    /* "é" is 2 bytes, "€" is 3, "😀" is 4: one character each, never cut */
    CHECK(utf8_prefix("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80x", 3) == 9);
    CHECK(utf8_prefix("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80x", 1) == 2);
    CHECK(utf8_prefix("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80x", 2) == 5);
}

int main(void)
{
    test_valid();
    test_decode();
    test_count_prefix();
    return unit_done();
}
