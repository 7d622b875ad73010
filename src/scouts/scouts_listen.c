/* The scouts threads and lifecycle.
 *
 * Listener: one dedicated libpq connection (outside the pool, on
 * STEWARD_DATABASE_LISTEN_URL so it bypasses a transaction pooler) LISTENs on the
 * scouts channel and turns notifications into delivery passes, resolved frames and
 * socket closes. When the connection breaks (a database restart) it reconnects with
 * backoff, LISTENs again and catches up: every user with a socket here gets a pass,
 * which delivers whatever was queued meanwhile.
 *
 * Timer: runs the ack-timeout sweep every ack_timeout_s/4 (1..30 s), refreshes the
 * presence of the devices connected here every heartbeat_s/2, and retries passes that
 * failed while the database was away. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scouts_int.h"
#include "scouts_notify.h"
#include "steward/crypto.h"
#include "steward/err.h"

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
    s->listen_url = strdup(set->database_listen_url ? set->database_listen_url : "");
    s->set.database_listen_url = s->listen_url;
    unsigned char rnd[8];
    if (!s->listen_url || crypto_random(rnd, sizeof(rnd)) != 0 ||
        hash_init(&s->by_sid, SCOUTS_BUCKETS) != 0 || hash_init(&s->by_user, SCOUTS_BUCKETS) != 0) {
        hash_release(&s->by_sid);
        hash_release(&s->by_user);
        free(s->listen_url);
        free(s);
        return NULL;
    }
    crypto_hex(rnd, sizeof(rnd), s->instance);
    s->wake_pipe[0] = s->wake_pipe[1] = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->tmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->tcv, &ca);
    pthread_condattr_destroy(&ca);
    return s;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps up to ms unless asked to stop; returns true when stopping. */
static bool nap(struct scouts *s, int ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->tmu);
    while (!s->stop_threads && pthread_cond_timedwait(&s->tcv, &s->tmu, &dl) != ETIMEDOUT) {
    }
    bool stop = s->stop_threads;
    pthread_mutex_unlock(&s->tmu);
    return stop;
}

static bool stopping_threads(struct scouts *s)
{
    pthread_mutex_lock(&s->tmu);
    bool stop = s->stop_threads;
    pthread_mutex_unlock(&s->tmu);
    return stop;
}

static void *timer_main(void *arg)
{
    struct scouts *s = arg;
    int sweep_ms = s->set.ack_timeout_s * 1000 / 4;
    if (sweep_ms < 1000)
        sweep_ms = 1000;
    if (sweep_ms > 30000)
        sweep_ms = 30000;
    int presence_ms = s->set.ws_heartbeat_s * 1000 / 2;
    if (presence_ms < 1000)
        presence_ms = 1000;
    int64_t next_sweep = mono_ms() + sweep_ms, next_presence = mono_ms() + presence_ms;
    while (!nap(s, 250)) {
        int64_t now = mono_ms();
        if (atomic_exchange(&s->retry_all, false))
            scouts_catch_up(s);
        if (now >= next_sweep) {
            long long requeued, failed;
            int rc = scouts_delivery_sweep(s, &requeued, &failed);
            if (rc != ST_OK && rc != ST_EUNAVAIL)
                log_msg(s->lg, LOG_WARN, "delivery sweep failed", "error", st_strerror(rc),
                        NULL);
            next_sweep = mono_ms() + sweep_ms;
        }
        if (now >= next_presence) {
            scouts_presence_tick(s);
            next_presence = mono_ms() + presence_ms;
        }
    }
    return NULL;
}

static PGconn *listen_connect(struct scouts *s)
{
    const char *keys[] = {"dbname", "application_name", "connect_timeout", "keepalives",
                          "keepalives_idle", "keepalives_interval", "keepalives_count", NULL};
    const char *vals[] = {s->listen_url, "steward-listen", "3", "1", "10", "5", "3", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, "LISTEN " SCOUTS_CHANNEL);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* At start and after the database came back: the pool's connections (new ones then) are
 * opened and their ingest and delivery statements prepared now rather than by the first
 * proposals, which would otherwise wait 5-50 ms each on a cold connection. */
static void warm(struct scouts *s)
{
    int64_t t0 = mono_ms();
    int n = 0;
    int rc = scouts_warm(s, &n);
    struct log_line l;
    log_begin(&l, s->lg, rc == ST_OK ? LOG_INFO : LOG_WARN, "database connections warmed");
    log_int(&l, "connections", n);
    log_int(&l, "duration_ms", (long long)(mono_ms() - t0));
    if (rc != ST_OK)
        log_str(&l, "error", st_strerror(rc));
    log_end(&l);
}

static void *listen_main(void *arg)
{
    struct scouts *s = arg;
    PGconn *c = NULL;
    int backoff_ms = 100;
    bool warned = false;
    while (!stopping_threads(s)) {
        if (!c) {
            c = listen_connect(s);
            if (!c) {
                if (!warned)
                    log_msg(s->lg, LOG_WARN, "notification listener cannot connect; retrying",
                            NULL);
                warned = true;
                if (nap(s, backoff_ms))
                    break;
                backoff_ms = backoff_ms * 2 > 2000 ? 2000 : backoff_ms * 2;
                continue;
            }
            log_msg(s->lg, warned ? LOG_INFO : LOG_DEBUG, "notification listener connected",
                    NULL);
            warned = false;
            backoff_ms = 100;
            warm(s);
            /* whatever was queued while nobody listened is delivered now */
            scouts_catch_up(s);
        }
        struct pollfd fds[2] = {{PQsocket(c), POLLIN, 0}, {s->wake_pipe[0], POLLIN, 0}};
        int n = poll(fds, 2, 1000);
        if (n < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        if (n > 0 && fds[0].revents) {
            if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) {
                log_msg(s->lg, LOG_WARN, "notification listener lost its connection", NULL);
                PQfinish(c);
                c = NULL;
                warned = true;
                continue;
            }
            PGnotify *nt;
            while ((nt = PQnotifies(c)) != NULL) {
                scouts_on_notify(s, nt->extra);
                PQfreemem(nt);
            }
        }
    }
    PQfinish(c);
    return NULL;
}

int scouts_start(struct scouts *s)
{
    if (pipe2(s->wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    if (pthread_create(&s->listen_thr, NULL, listen_main, s) != 0)
        return -1;
    s->listen_started = true;
    if (pthread_create(&s->timer_thr, NULL, timer_main, s) != 0)
        return -1;
    s->timer_started = true;
    return 0;
}

void scouts_stop(struct scouts *s)
{
    if (!s || atomic_load(&s->stopping))
        return;
    pthread_mutex_lock(&s->tmu);
    s->stop_threads = true;
    pthread_cond_broadcast(&s->tcv);
    pthread_mutex_unlock(&s->tmu);
    if (s->wake_pipe[1] >= 0) {
        ssize_t w = write(s->wake_pipe[1], "x", 1);
        (void)w;
    }
    if (s->listen_started)
        pthread_join(s->listen_thr, NULL);
    if (s->timer_started)
        pthread_join(s->timer_thr, NULL);
    s->listen_started = s->timer_started = false;
    /* no new device work; let what is running finish before the sockets go */
    atomic_store(&s->stopping, true);
    int64_t deadline = mono_ms() + STOP_WAIT_MS;
    while (atomic_load(&s->jobs) > 0 && mono_ms() < deadline)
        usleep(5000);
    char *ids = scouts_local_devices_json(s);
    if (ids)
        scouts_devices_offline_all(s, ids);
    free(ids);
}

void scouts_free(struct scouts *s)
{
    if (!s)
        return;
    scouts_sessions_free(s);
    hash_release(&s->by_sid);
    hash_release(&s->by_user);
    for (int i = 0; i < 2; i++)
        if (s->wake_pipe[i] >= 0)
            close(s->wake_pipe[i]);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->tmu);
    pthread_cond_destroy(&s->tcv);
    free(s->listen_url);
    free(s);
}
