/* The scouts threads and lifecycle.
 *
 * Listener: the process's LISTEN connection (steward/listen.h, shared with the API-key
 * revocations) LISTENs on the scouts channel too, and its notifications become delivery
 * passes, resolved frames and socket closes. When the connection breaks (a database
 * restart) it reconnects with backoff, LISTENs again, and the scouts catch up: every
 * user with a socket here gets a pass, which delivers whatever was queued meanwhile,
 * and the devices held here are looked up for deletions whose notification was
 * missed.
 *
 * Periodic jobs, on the process's scheduler (scouts_start registers them): the
 * ack-timeout sweep every ack_timeout_s/4 (1..30 s), the renewal of this instance's
 * presence lease every heartbeat_s/2 (at least 1 s; the first at once), and, every
 * 250 ms, a retry of the passes that failed while the database was away and the grouped
 * release of the devices whose last socket here closed meanwhile. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scouts_int.h"
#include "steward/clock.h"
#include "scouts_notify.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/listen.h"
#include "steward/sched.h"

#define STOP_WAIT_MS 10000

struct scouts *scouts_new(struct pool *pool, const struct logger *lg, struct metrics *metrics,
                          struct workq *workq, struct ws_server *ws, struct lessons *lessons,
                          const struct scouts_settings *set)
{
    struct scouts *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->pool = pool;
    s->lg = lg;
    s->metrics = metrics;
    s->workq = workq;
    s->ws = ws;
    s->lessons = lessons;
    s->set = *set;
    unsigned char rnd[8];
    s->leaders = workq_new(SCOUTS_INGEST_LEADERS);
    if (!s->leaders || crypto_random(rnd, sizeof(rnd)) != 0 ||
        hash_init(&s->by_sid, SCOUTS_BUCKETS) != 0 || hash_init(&s->by_user, SCOUTS_BUCKETS) != 0) {
        hash_release(&s->by_sid);
        hash_release(&s->by_user);
        workq_free(s->leaders);
        free(s);
        return NULL;
    }
    crypto_hex(rnd, sizeof(rnd), s->instance);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->hmu, NULL);
    pthread_mutex_init(&s->imu, NULL);
    pthread_cond_init(&s->icv, NULL);
    return s;
}

/* The periodic jobs do nothing once scouts_stop began (the scheduler is stopped before
 * it, so this only guards a wrong order: a lease renewal after the shutdown released
 * the devices would leave a lease row behind). */
static bool jobs_off(struct scouts *s)
{
    return atomic_load(&s->stopping);
}

/* Inline on the scheduler thread: atomic flags, and when set only queues jobs. */
static void retry_job(void *arg)
{
    struct scouts *s = arg;
    if (jobs_off(s))
        return;
    if (atomic_exchange(&s->retry_all, false))
        scouts_catch_up(s);
    scouts_offline_flush(s);
}

static void sweep_job(void *arg)
{
    struct scouts *s = arg;
    if (jobs_off(s))
        return;
    long long requeued, failed;
    int rc = scouts_delivery_sweep(s, &requeued, &failed);
    if (rc != ST_OK && rc != ST_EUNAVAIL)
        log_msg(s->lg, LOG_WARN, "delivery sweep failed", "error", st_strerror(rc), NULL);
}

static void presence_job(void *arg)
{
    struct scouts *s = arg;
    if (!jobs_off(s))
        scouts_presence_tick(s);
}

/* At start and after the database came back: the pool's connections (new ones then) are
 * opened and their ingest and delivery statements prepared now rather than by the first
 * proposals, which would otherwise wait 5-50 ms each on a cold connection. */
static void warm(struct scouts *s)
{
    int64_t t0 = clock_now_ms();
    int n = 0;
    int rc = scouts_warm(s, &n);
    struct log_line l;
    log_begin(&l, s->lg, rc == ST_OK ? LOG_INFO : LOG_WARN, "database connections warmed");
    log_int(&l, "connections", n);
    log_int(&l, "duration_ms", (long long)(clock_now_ms() - t0));
    if (rc != ST_OK)
        log_str(&l, "error", st_strerror(rc));
    log_end(&l);
}

/* The probe: once the listener LISTENs, a notification with a fresh nonce goes out
 * through the pool. Hearing it proves that what the pool's transactions notify reaches
 * this listener (not so when STEWARD_DATABASE_URL and STEWARD_DATABASE_LISTEN_URL lead to
 * different databases, or a pooler swallows NOTIFY). */
static const struct db_stmt st_probe = {"scouts_listen_probe", "SELECT pg_notify($1, $2)", 2};

/* Sends the probe; false when the pool could not (retried on the next round). */
static bool probe_send(struct scouts *s)
{
    struct pool_conn *c;
    if (pool_acquire_within(s->pool, 1000, &c) != ST_OK)
        return false;
    const char *params[] = {SCOUTS_CHANNEL, s->probe};
    PGresult *r = pool_exec(c, &st_probe, params);
    int rc = pool_result_err(c, r);
    PQclear(r);
    pool_release(s->pool, c);
    return rc == ST_OK;
}

static void probe_new(struct scouts *s)
{
    unsigned char rnd[8];
    char hex[17];
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        memset(rnd, 0, sizeof(rnd));
    crypto_hex(rnd, sizeof(rnd), hex);
    snprintf(s->probe, sizeof(s->probe), "p|%s|%s", s->instance, hex);
    atomic_store(&s->probe_since_ms, clock_now_ms());
}

const char *scouts_listen_problem(struct scouts *s)
{
    int64_t since = atomic_load(&s->probe_since_ms);
    if (since == 0 || clock_now_ms() - since < SCOUTS_PROBE_WAIT_MS)
        return NULL;
    if (!atomic_load(&s->listen_connected))
        return "the notification listener cannot LISTEN on STEWARD_DATABASE_LISTEN_URL (no "
               "writable primary there?); connected devices get no live proposals";
    return "a NOTIFY sent through STEWARD_DATABASE_URL did not reach the listener on "
           "STEWARD_DATABASE_LISTEN_URL: both must lead to the same PostgreSQL database, the "
           "listener directly or through a session-mode pool";
}

/* ---- the scouts channel's callbacks, on the listener's thread ---- */

static void on_connected(void *ctx, bool first)
{
    (void)first; /* the first connection catches up too: devices may say hello before it */
    struct scouts *s = ctx;
    atomic_store(&s->listen_connected, true);
    probe_new(s);
    s->probe_due = true;
    s->probe_warned = false;
    warm(s);
    /* whatever was queued while nobody listened is delivered now, and devices deleted
     * meanwhile (their notification was missed) are closed */
    scouts_catch_up(s);
    scouts_recheck_devices(s);
}

static void on_lost(void *ctx)
{
    struct scouts *s = ctx;
    atomic_store(&s->listen_connected, false);
    /* unheard from here on, until the next connection's probe comes back */
    atomic_store(&s->probe_since_ms, clock_now_ms());
}

static void on_tick(void *ctx)
{
    struct scouts *s = ctx;
    if (s->probe_due)
        s->probe_due = !probe_send(s);
    int64_t since = atomic_load(&s->probe_since_ms);
    if (since && !s->probe_warned && clock_now_ms() - since >= SCOUTS_PROBE_WAIT_MS) {
        log_msg(s->lg, LOG_WARN, "notification probe not heard", "error", scouts_listen_problem(s),
                NULL);
        s->probe_warned = true;
    }
}

static void on_notify(void *ctx, const char *payload)
{
    struct scouts *s = ctx;
    if (payload[0] == 'p' && strcmp(payload, s->probe) == 0) {
        if (s->probe_warned)
            log_msg(s->lg, LOG_INFO, "notification probe heard", NULL);
        atomic_store(&s->probe_since_ms, 0);
    } else {
        scouts_drain_add(s, &s->drain, payload);
    }
}

static void on_drained(void *ctx)
{
    struct scouts *s = ctx;
    scouts_drain_flush(s, &s->drain);
}

int scouts_start(struct scouts *s, struct sched *sc, struct listener *l)
{
    const struct listen_channel ch = {.name = SCOUTS_CHANNEL,
                                      .ctx = s,
                                      .connected = on_connected,
                                      .lost = on_lost,
                                      .notify = on_notify,
                                      .drained = on_drained,
                                      .tick = on_tick};
    /* not heard yet: readiness fails once this has lasted SCOUTS_PROBE_WAIT_MS */
    atomic_store(&s->probe_since_ms, clock_now_ms());
    if (listener_add(l, &ch) != 0)
        return -1;
    int sweep_ms = s->set.ack_timeout_s * 1000 / 4;
    if (sweep_ms < 1000)
        sweep_ms = 1000;
    if (sweep_ms > 30000)
        sweep_ms = 30000;
    int presence_ms = s->set.ws_heartbeat_s * 1000 / 2;
    if (presence_ms < 1000)
        presence_ms = 1000;
    const struct sched_job jobs[] = {
        {.name = "scouts_retry", .fn = retry_job, .ctx = s, .period_ms = 250, .inline_run = true},
        {.name = "delivery_sweep", .fn = sweep_job, .ctx = s, .period_ms = sweep_ms},
        {.name = "presence_refresh",
         .fn = presence_job,
         .ctx = s,
         .period_ms = presence_ms,
         .first_ms = 1},
    };
    for (size_t i = 0; i < sizeof(jobs) / sizeof(jobs[0]); i++)
        if (sched_add(sc, &jobs[i]) != 0)
            return -1;
    return 0;
}

void scouts_stop(struct scouts *s)
{
    if (!s || atomic_load(&s->stopping))
        return;
    /* no new device work; let what is running finish before the sockets go */
    atomic_store(&s->stopping, true);
    struct deadline deadline = deadline_in_ms(STOP_WAIT_MS);
    while (atomic_load(&s->jobs) > 0 && !deadline_passed(deadline))
        usleep(5000);
    /* one statement releases every device held here and drops the lease */
    scouts_hosts_release(s);
}

void scouts_free(struct scouts *s)
{
    if (!s)
        return;
    workq_free(s->leaders); /* runs the leaders still queued (scouts_stop waited for them) */
    scouts_sessions_free(s);
    free(s->offline);
    hash_release(&s->by_sid);
    hash_release(&s->by_user);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->hmu);
    pthread_mutex_destroy(&s->imu);
    pthread_cond_destroy(&s->icv);
    free(s);
}
