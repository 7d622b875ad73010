/* The WebSocket layer's pure part: the FIFO of sessions awaiting device_hello (the
 * UTF-8 check of text frames is core's, tests/unit/core/test_utf8.c). */
#include <stdio.h>
#include <string.h>

#include "steward/ws.h"
#include "ws/ws_int.h"
#include "unit.h"

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
    test_hello_fifo();
    test_hello_fifo_many();
    return unit_done();
}
