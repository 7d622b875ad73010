/* The WebSocket layer's pure parts: the UTF-8 check of text frames. */
#include <stdio.h>
#include <string.h>

#include "steward/ws.h"
#include "unit.h"

static bool utf8(const char *s)
{
    return ws_utf8_valid((const unsigned char *)s, strlen(s));
}

static void test_utf8(void)
{
    CHECK(ws_utf8_valid((const unsigned char *)"", 0));
    CHECK(utf8("{\"type\":\"device_hello\"}"));
    CHECK(utf8("caf\xc3\xa9"));                   /* U+00E9 */
    CHECK(utf8("\xe2\x82\xac"));                  /* U+20AC */
    CHECK(utf8("\xf0\x9f\x98\x80"));              /* U+1F600 */
    CHECK(utf8("\xed\x9f\xbf"));                  /* U+D7FF, just below the surrogates */
    CHECK(utf8("\xee\x80\x80"));                  /* U+E000, just above them */
    CHECK(utf8("\xf4\x8f\xbf\xbf"));              /* U+10FFFF, the last code point */
    CHECK(utf8("\xc2\x80"));                      /* U+0080, the first two-byte form */
    CHECK(utf8("\xe0\xa0\x80"));                  /* U+0800, the first three-byte form */
    CHECK(utf8("\xf0\x90\x80\x80"));              /* U+10000, the first four-byte form */
    /* a NUL inside a frame is valid UTF-8 (the JSON parser rejects it, not this) */
    CHECK(ws_utf8_valid((const unsigned char *)"a\0b", 3));

    CHECK(!utf8("\xff"));
    CHECK(!utf8("{\"type\":\"x\"}\xff"));         /* the storm test's frame */
    CHECK(!utf8("{\"type\":\"\xc3\x28\"}"));      /* bad continuation byte */
    CHECK(!utf8("\x80"));                         /* lone continuation byte */
    CHECK(!utf8("\xc0\xaf"));                     /* overlong '/' */
    CHECK(!utf8("\xc1\xbf"));                     /* overlong two-byte */
    CHECK(!utf8("\xe0\x9f\xbf"));                 /* overlong three-byte */
    CHECK(!utf8("\xf0\x8f\xbf\xbf"));             /* overlong four-byte */
    CHECK(!utf8("\xed\xa0\x80"));                 /* U+D800, a surrogate */
    CHECK(!utf8("\xed\xbf\xbf"));                 /* U+DFFF */
    CHECK(!utf8("\xf4\x90\x80\x80"));             /* U+110000 */
    CHECK(!utf8("\xf5\x80\x80\x80"));
    CHECK(!utf8("\xc3"));                         /* truncated at the end */
    CHECK(!utf8("\xe2\x82"));
    CHECK(!utf8("\xf0\x9f\x98"));
    CHECK(!utf8("\xe2\x82x"));                    /* truncated in the middle */
    CHECK(!utf8("\xf0\x9f\x98\x28"));
}

int main(void)
{
    test_utf8();
    return unit_done();
}
