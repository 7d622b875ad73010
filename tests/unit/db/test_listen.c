/* The process's listener (steward/listen.h) against a real PostgreSQL: one connection
 * LISTENs on every channel added; each notification reaches its own channel's callback,
 * in order, and each channel with any hears "drained" once per read; when its backend is
 * terminated it tells every channel, reconnects and LISTENs again (connected, not first);
 * and it stops promptly. */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "steward/clock.h"
#include "steward/listen.h"
#include "unit.h"

#define MAX_SEEN 16

/* What one channel's callbacks saw (written on the listener's thread). */
struct seen {
    pthread_mutex_t mu;
    char payloads[MAX_SEEN][32];
    int n;
    int connected, connected_first, lost, drained, ticks;
};

/* Adds by to a field of s, under its lock. */
static void bump(struct seen *s, int *field, int by)
{
    pthread_mutex_lock(&s->mu);
    *field += by;
    pthread_mutex_unlock(&s->mu);
}

static void on_connected(void *ctx, bool first)
{
    struct seen *s = ctx;
    bump(s, &s->connected, 1);
    bump(s, &s->connected_first, first);
}

static void on_lost(void *ctx)
{
    struct seen *s = ctx;
    bump(s, &s->lost, 1);
}

static void on_notify(void *ctx, const char *payload)
{
    struct seen *s = ctx;
    pthread_mutex_lock(&s->mu);
    if (s->n < MAX_SEEN)
        snprintf(s->payloads[s->n++], sizeof(s->payloads[0]), "%s", payload);
    pthread_mutex_unlock(&s->mu);
}

static void on_drained(void *ctx)
{
    struct seen *s = ctx;
    bump(s, &s->drained, 1);
}

static void on_tick(void *ctx)
{
    struct seen *s = ctx;
    bump(s, &s->ticks, 1);
}

static int get(struct seen *s, const int *field)
{
    pthread_mutex_lock(&s->mu);
    int v = *field;
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* Waits up to 10 s for *field of s to reach want. */
static bool wait_for(struct seen *s, const int *field, int want)
{
    for (int i = 0; i < 1000; i++) {
        if (get(s, field) >= want)
            return true;
        usleep(10000);
    }
    return false;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
    PQclear(r);
}

/* How many listening connections of ours the server holds. */
static int listeners(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = 'steward-listen'");
    int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return n;
}

/* Waits up to 5 s for the server to hold n of them. */
static bool listeners_become(PGconn *c, int n)
{
    for (int i = 0; i < 250; i++) {
        if (listeners(c) == n)
            return true;
        usleep(20000);
    }
    return false;
}

static bool payloads_are(struct seen *s, const char *const *want, int n)
{
    pthread_mutex_lock(&s->mu);
    bool ok = s->n == n;
    for (int i = 0; ok && i < n; i++)
        ok = strcmp(s->payloads[i], want[i]) == 0;
    pthread_mutex_unlock(&s->mu);
    return ok;
}

static void one_connection_for_every_channel(const char *url, const struct logger *lg)
{
    static struct seen a = {.mu = PTHREAD_MUTEX_INITIALIZER};
    static struct seen b = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct listener *l = listener_new(url, lg);
    CHECK(l != NULL);
    const struct listen_channel ca = {.name = "unit_listen_a",
                                      .ctx = &a,
                                      .connected = on_connected,
                                      .lost = on_lost,
                                      .notify = on_notify,
                                      .drained = on_drained,
                                      .tick = on_tick};
    struct listen_channel cb = ca;
    cb.name = "unit_listen_b";
    cb.ctx = &b;
    CHECK(listener_add(l, &ca) == 0);
    CHECK(listener_add(l, &cb) == 0);
    CHECK(listener_start(l) == 0);
    CHECK(listener_add(l, &ca) == -1); /* too late once started */
    CHECK(wait_for(&a, &a.connected, 1) && wait_for(&b, &b.connected, 1));
    CHECK(get(&a, &a.connected_first) == 1 && get(&b, &b.connected_first) == 1);

    PGconn *c = PQconnectdb(url);
    CHECK(PQstatus(c) == CONNECTION_OK);
    CHECK(listeners_become(c, 1));
    /* one notification each, then one transaction with three, and one on a channel
     * nobody added */
    exec_ok(c, "NOTIFY unit_listen_a, 'a1'");
    exec_ok(c, "NOTIFY unit_listen_b, 'b1'");
    exec_ok(c, "NOTIFY unit_listen_other, 'o1'");
    exec_ok(c, "SELECT pg_notify('unit_listen_a', 'a2'), pg_notify('unit_listen_b', 'b2'), "
               "pg_notify('unit_listen_a', 'a3')");
    CHECK(wait_for(&a, &a.n, 3) && wait_for(&b, &b.n, 2));
    usleep(200000);
    const char *want_a[] = {"a1", "a2", "a3"};
    const char *want_b[] = {"b1", "b2"};
    CHECK(payloads_are(&a, want_a, 3));
    CHECK(payloads_are(&b, want_b, 2));
    /* drained once per read that brought any: at least one, at most one per payload */
    CHECK(get(&a, &a.drained) >= 1 && get(&a, &a.drained) <= 3);
    CHECK(get(&b, &b.drained) >= 1 && get(&b, &b.drained) <= 2);
    CHECK(get(&a, &a.ticks) >= 1);

    /* its backend terminated: every channel hears lost, then connected (not first) */
    exec_ok(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'steward-listen'");
    CHECK(wait_for(&a, &a.lost, 1) && wait_for(&b, &b.lost, 1));
    CHECK(wait_for(&a, &a.connected, 2) && wait_for(&b, &b.connected, 2));
    CHECK(get(&a, &a.connected_first) == 1 && get(&b, &b.connected_first) == 1);
    exec_ok(c, "NOTIFY unit_listen_b, 'b3'");
    CHECK(wait_for(&b, &b.n, 3));
    const char *want_b2[] = {"b1", "b2", "b3"};
    CHECK(payloads_are(&b, want_b2, 3));
    CHECK(listeners_become(c, 1));

    /* stops within a round of its loop, and no callback runs after */
    int64_t t0 = clock_now_ms();
    listener_stop(l);
    CHECK(clock_now_ms() - t0 < 2000);
    int ticks = get(&a, &a.ticks);
    exec_ok(c, "NOTIFY unit_listen_a, 'a4'");
    usleep(300000);
    CHECK(get(&a, &a.n) == 3 && get(&a, &a.ticks) == ticks);
    CHECK(listeners_become(c, 0));
    listener_stop(l); /* twice is fine */
    listener_free(l);
    PQfinish(c);
}

static void channels_are_bounded(const struct logger *lg)
{
    struct listener *l = listener_new("host=127.0.0.1 port=1", lg);
    CHECK(l != NULL);
    struct listen_channel ch = {.name = "unit_listen_x", .notify = on_notify};
    for (int i = 0; i < LISTEN_MAX_CHANNELS; i++)
        CHECK(listener_add(l, &ch) == 0);
    CHECK(listener_add(l, &ch) == -1);
    struct listen_channel no_notify = {.name = "unit_listen_y"};
    listener_free(l);
    l = listener_new("host=127.0.0.1 port=1", lg);
    CHECK(listener_add(l, &no_notify) == -1); /* a channel must take its notifications */
    listener_free(l);                         /* never started: nothing to join */
}

int main(void)
{
    const char *url = unit_database_url();
    struct logger lg = {LOG_ERROR, stderr};
    one_connection_for_every_channel(url, &lg);
    channels_are_bounded(&lg);
    return unit_done();
}
