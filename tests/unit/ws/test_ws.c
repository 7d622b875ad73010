/* The WebSocket layer's pure parts: the FIFO of sessions awaiting device_hello and the
 * UTF-8 check of text frames. */
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

static void test_hello_fifo(void)
{
    struct ws_hello_fifo q = {0};
    struct ws_hello_node n[5];
    memset(n, 0, sizeof(n));

    CHECK(ws_hello_next_due(&q, 0) == -1);
    CHECK(ws_hello_pop_due(&q, 1000000) == NULL);

    ws_hello_push(&q, &n[0], 100);
    ws_hello_push(&q, &n[1], 150);
    ws_hello_push(&q, &n[2], 150);
    ws_hello_push(&q, &n[3], 120); /* earlier than the tail: raised to 150 */
    CHECK(q.len == 4);
    CHECK(n[3].deadline_ms == 150);
    ws_hello_push(&q, &n[0], 999); /* already queued: nothing changes */
    CHECK(q.len == 4 && n[0].deadline_ms == 100);

    CHECK(ws_hello_next_due(&q, 40) == 60);
    CHECK(ws_hello_next_due(&q, 100) == 0);
    CHECK(ws_hello_next_due(&q, 500) == 0);
    CHECK(ws_hello_pop_due(&q, 99) == NULL);
    CHECK(ws_hello_pop_due(&q, 100) == &n[0]);
    CHECK(!n[0].queued && q.len == 3);
    CHECK(ws_hello_pop_due(&q, 100) == NULL);

    /* removal from the middle, the head and the tail keeps the order */
    ws_hello_push(&q, &n[4], 200);
    ws_hello_remove(&q, &n[2]);
    CHECK(q.len == 3 && !n[2].queued);
    ws_hello_remove(&q, &n[2]); /* not queued: nothing */
    CHECK(q.len == 3);
    ws_hello_remove(&q, &n[1]);
    CHECK(q.head == &n[3] && q.tail == &n[4]);
    ws_hello_remove(&q, &n[4]);
    CHECK(q.head == &n[3] && q.tail == &n[3] && q.len == 1);
    CHECK(ws_hello_pop_due(&q, 150) == &n[3]);
    CHECK(q.head == NULL && q.tail == NULL && q.len == 0);
    CHECK(ws_hello_next_due(&q, 150) == -1);

    /* a removed node can be queued again, at the tail */
    ws_hello_push(&q, &n[1], 300);
    ws_hello_push(&q, &n[0], 310);
    CHECK(q.head == &n[1] && q.tail == &n[0] && n[1].next == &n[0] && n[0].prev == &n[1]);

    /* everything due pops in deadline order */
    CHECK(ws_hello_pop_due(&q, 1000) == &n[1]);
    CHECK(ws_hello_pop_due(&q, 1000) == &n[0]);
    CHECK(ws_hello_pop_due(&q, 1000) == NULL);
}

/* 10,000 sessions: every push, removal and pop is O(1), so this is instant; the order
 * out is the order in, minus what was removed. */
static void test_hello_fifo_many(void)
{
    enum { N = 10000 };
    static struct ws_hello_node n[N];
    struct ws_hello_fifo q = {0};
    for (int i = 0; i < N; i++)
        ws_hello_push(&q, &n[i], 1000 + i / 10);
    for (int i = 0; i < N; i += 3)
        ws_hello_remove(&q, &n[i]); /* these said hello or closed */
    CHECK(q.len == N - (N + 2) / 3);
    int popped = 0, in_order = 1;
    struct ws_hello_node *prev = NULL, *x;
    while ((x = ws_hello_pop_due(&q, 1000 + N / 10)) != NULL) {
        if (prev && (x < prev || (x - n) % 3 == 0))
            in_order = 0;
        prev = x;
        popped++;
    }
    CHECK(popped == N - (N + 2) / 3);
    CHECK(in_order);
}

int main(void)
{
    test_utf8();
    test_hello_fifo();
    test_hello_fifo_many();
    return unit_done();
}
