/* The connection pool (steward/pool.h) against a real PostgreSQL: checkouts under
 * contention, the acquire timeout when every connection is out, a database that cannot
 * be reached, and a connection whose backend was terminated while idle. */
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "steward/err.h"
#include "steward/pool.h"
#include "steward/clock.h"
#include "unit.h"

static const struct db_stmt st_echo = {"unit_pool_echo", "SELECT $1::int + 0, pg_backend_pid()", 1};

/* ---- N threads x M checkouts on a pool of K connections ---- */

#define THREADS 8
#define CHECKOUTS 150
#define CONNS 3
#define MAX_SEEN 16

struct contention {
    struct pool *pool;
    pthread_barrier_t start;
    pthread_mutex_t mu; /* guards seen[] and nseen */
    struct pool_conn *seen[MAX_SEEN];
    int nseen;
    atomic_int holder[MAX_SEEN]; /* threads holding seen[i] right now */
    atomic_int held_now;
    atomic_int held_max;
    atomic_int acquired;
    atomic_int failed;    /* acquire did not answer ST_OK */
    atomic_int overlaps;  /* a connection handed to two threads at once */
    atomic_int bad_reply; /* a statement that did not answer what was sent */
};

static int conn_index(struct contention *t, struct pool_conn *c)
{
    pthread_mutex_lock(&t->mu);
    int i = 0;
    while (i < t->nseen && t->seen[i] != c)
        i++;
    if (i == t->nseen && i < MAX_SEEN)
        t->seen[t->nseen++] = c;
    pthread_mutex_unlock(&t->mu);
    return i < MAX_SEEN ? i : MAX_SEEN - 1;
}

static void *checkout_loop(void *arg)
{
    struct contention *t = ((void **)arg)[0];
    int id = (int)(intptr_t)((void **)arg)[1];
    pthread_barrier_wait(&t->start);
    for (int i = 0; i < CHECKOUTS; i++) {
        struct pool_conn *c;
        if (pool_acquire(t->pool, &c) != ST_OK) {
            atomic_fetch_add(&t->failed, 1);
            continue;
        }
        atomic_fetch_add(&t->acquired, 1);
        int k = conn_index(t, c);
        if (atomic_fetch_add(&t->holder[k], 1) != 0)
            atomic_fetch_add(&t->overlaps, 1);
        int now = atomic_fetch_add(&t->held_now, 1) + 1;
        int max = atomic_load(&t->held_max);
        while (now > max && !atomic_compare_exchange_weak(&t->held_max, &max, now))
            ;
        char v[16];
        snprintf(v, sizeof(v), "%d", id * 100000 + i);
        const char *params[] = {v};
        PGresult *r = pool_exec(c, &st_echo, params);
        if (pool_result_err(c, r) != ST_OK || PQntuples(r) != 1 ||
            strcmp(PQgetvalue(r, 0, 0), v) != 0)
            atomic_fetch_add(&t->bad_reply, 1);
        PQclear(r);
        atomic_fetch_sub(&t->held_now, 1);
        atomic_fetch_sub(&t->holder[k], 1);
        pool_release(t->pool, c);
    }
    return NULL;
}

static void contention(const char *url, const struct logger *lg)
{
    static struct contention t;
    t.pool = pool_new(url, CONNS, 30000, 10000, lg);
    CHECK(t.pool != NULL);
    pthread_mutex_init(&t.mu, NULL);
    pthread_barrier_init(&t.start, NULL, THREADS);
    pthread_t th[THREADS];
    void *args[THREADS][2];
    for (int i = 0; i < THREADS; i++) {
        args[i][0] = &t;
        args[i][1] = (void *)(intptr_t)i;
        pthread_create(&th[i], NULL, checkout_loop, args[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);

    CHECK(atomic_load(&t.failed) == 0);
    CHECK(atomic_load(&t.acquired) == THREADS * CHECKOUTS);
    CHECK(atomic_load(&t.overlaps) == 0);
    CHECK(atomic_load(&t.bad_reply) == 0);
    CHECK(atomic_load(&t.held_max) <= CONNS);
    CHECK(t.nseen == CONNS); /* contention used every connection, and no other */
    struct pool_stats s;
    pool_stats(t.pool, &s);
    CHECK(s.size == CONNS);
    CHECK(s.acquired_total == THREADS * CHECKOUTS);
    CHECK(s.timeouts_total == 0);
    CHECK(s.wait_count == THREADS * CHECKOUTS);
    CHECK(s.busy == 0);
    CHECK(s.waiting == 0);
    CHECK(s.open == CONNS);
    pool_free(t.pool);
    pthread_barrier_destroy(&t.start);
    pthread_mutex_destroy(&t.mu);
}

/* ---- every connection out: the timeout, a try without wait, a waiter handed one ---- */

struct waiter {
    struct pool *pool;
    struct pool_conn *got;
    int rc;
};

static void *wait_for_conn(void *arg)
{
    struct waiter *w = arg;
    w->rc = pool_acquire_within(w->pool, 20000, &w->got);
    return NULL;
}

static void exhausted(const char *url, const struct logger *lg)
{
    struct pool *p = pool_new(url, 2, 150, 10000, lg);
    CHECK(p != NULL);
    struct pool_conn *a = NULL, *b = NULL, *c = NULL;
    CHECK(pool_acquire(p, &a) == ST_OK);
    CHECK(pool_acquire(p, &b) == ST_OK);
    CHECK(a != NULL && b != NULL && a != b);

    int64_t t0 = clock_now_ms();
    CHECK(pool_acquire(p, &c) == ST_EUNAVAIL);
    int64_t waited = clock_now_ms() - t0;
    CHECK(waited >= 140); /* it waited its acquire timeout (150 ms) */
    CHECK(c == NULL);
    struct pool_stats s;
    pool_stats(p, &s);
    CHECK(s.timeouts_total == 1);
    CHECK(s.busy == 2);

    /* a try without a wait is refused at once and is no timeout */
    t0 = clock_now_ms();
    CHECK(pool_acquire_within(p, 0, &c) == ST_EUNAVAIL);
    CHECK(clock_now_ms() - t0 < 100);
    pool_stats(p, &s);
    CHECK(s.timeouts_total == 1);

    /* a waiter is handed the connection given back */
    struct waiter w = {p, NULL, -1};
    pthread_t th;
    pthread_create(&th, NULL, wait_for_conn, &w);
    for (int i = 0; i < 20000; i++) {
        pool_stats(p, &s);
        if (s.waiting == 1)
            break;
        clock_sleep_us(1000);
    }
    CHECK(s.waiting == 1);
    pool_release(p, a);
    pthread_join(th, NULL);
    CHECK(w.rc == ST_OK);
    CHECK(w.got == a);
    pool_release(p, w.got);
    pool_release(p, b);

    pool_stats(p, &s);
    CHECK(s.busy == 0);
    CHECK(s.waiting == 0);
    CHECK(s.acquired_total == 3);
    CHECK(s.timeouts_total == 1);
    CHECK(s.wait_count == 4); /* three checkouts and the timeout; not the try */
    pool_free(p);
}

/* ---- no database: a checkout answers unavailable at once and gives its slot back ---- */

static void unreachable(const struct logger *lg)
{
    struct pool *p =
        pool_new("postgresql:///none?host=/nonexistent-steward-dir&port=1", 1, 1000, 1000, lg);
    CHECK(p != NULL);
    struct pool_conn *c = NULL;
    int64_t t0 = clock_now_ms();
    CHECK(pool_acquire(p, &c) == ST_EUNAVAIL);
    CHECK(pool_acquire(p, &c) == ST_EUNAVAIL); /* the only slot came back: no wait */
    CHECK(clock_now_ms() - t0 < 900);
    struct pool_stats s;
    pool_stats(p, &s);
    CHECK(s.timeouts_total == 0);
    CHECK(s.busy == 0);
    CHECK(s.open == 0);
    pool_free(p);
}

/* ---- a backend terminated while its connection was idle: the next checkout heals ---- */

static int backend_pid(struct pool_conn *c)
{
    const char *params[] = {"1"};
    PGresult *r = pool_exec(c, &st_echo, params);
    int pid = pool_result_err(c, r) == ST_OK && PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 1)) : -1;
    PQclear(r);
    return pid;
}

/* Runs sql with one parameter on its own connection; returns the first value as a number. */
static long query_one(const char *url, const char *sql, const char *param)
{
    PGconn *pg = PQconnectdb(url);
    long v = -1;
    if (PQstatus(pg) == CONNECTION_OK) {
        PGresult *r = PQexecParams(pg, sql, 1, NULL, &param, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
    }
    PQfinish(pg);
    return v;
}

static void heals(const char *url, const struct logger *lg)
{
    struct pool *p = pool_new(url, 1, 5000, 10000, lg);
    struct pool_conn *c;
    CHECK(pool_acquire(p, &c) == ST_OK);
    int pid = backend_pid(c);
    CHECK(pid > 0);
    pool_release(p, c);

    char spid[16];
    snprintf(spid, sizeof(spid), "%d", pid);
    CHECK(query_one(url, "SELECT pg_terminate_backend($1::int)::int", spid) == 1);
    long left = -1;
    for (int i = 0; i < 10000 && left != 0; i++) {
        left = query_one(url, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", spid);
        clock_sleep_us(1000);
    }
    CHECK(left == 0);

    CHECK(pool_acquire(p, &c) == ST_OK);
    int pid2 = backend_pid(c);
    CHECK(pid2 > 0 && pid2 != pid);
    pool_release(p, c);
    struct pool_stats s;
    pool_stats(p, &s);
    CHECK(s.open == 1);
    CHECK(s.busy == 0);
    pool_free(p);
}

/* ---- the operator's URL parameters win; steward's defaults fill in the rest ---- */

static const char *conninfo_val(PQconninfoOption *o, const char *key)
{
    for (; o && o->keyword; o++)
        if (strcmp(o->keyword, key) == 0)
            return o->val ? o->val : "";
    return "?";
}

static void url_parameters_win(void)
{
    /* nothing listens on port 1: the options are what libpq would have used */
    PGconn *pg = pool_connect("postgresql://127.0.0.1:1/x?application_name=ops-app&"
                              "keepalives_idle=17&target_session_attrs=any",
                              "steward", 1, NULL);
    PQconninfoOption *o = PQconninfo(pg);
    CHECK_STR(conninfo_val(o, "application_name"), "ops-app");
    CHECK_STR(conninfo_val(o, "keepalives_idle"), "17");
    CHECK_STR(conninfo_val(o, "target_session_attrs"), "any");
    CHECK_STR(conninfo_val(o, "connect_timeout"), "1");
    CHECK_STR(conninfo_val(o, "keepalives"), "1");
    CHECK_STR(conninfo_val(o, "keepalives_interval"), "2");
    CHECK_STR(conninfo_val(o, "keepalives_count"), "3");
    CHECK_STR(conninfo_val(o, "tcp_user_timeout"), "10000");
    CHECK_STR(conninfo_val(o, "dbname"), "x");
    PQconninfoFree(o);
    PQfinish(pg);
    pg = pool_connect("host=127.0.0.1 port=1 connect_timeout=9", "steward-listen", 3, NULL);
    o = PQconninfo(pg);
    CHECK_STR(conninfo_val(o, "application_name"), "steward-listen");
    CHECK_STR(conninfo_val(o, "connect_timeout"), "9");
    CHECK_STR(conninfo_val(o, "target_session_attrs"), "read-write");
    CHECK_STR(conninfo_val(o, "keepalives_idle"), "5");
    PQconninfoFree(o);
    PQfinish(pg);
}

/* ---- a read-only server: 503, and the connection is not used again ---- */

static const struct db_stmt st_write = {"unit_pool_write", "CREATE TEMP TABLE unit_ro (x int)", 0};

static void read_only_discarded(const char *url, const struct logger *lg)
{
    struct pool *p = pool_new(url, 1, 5000, 10000, lg);
    struct pool_conn *c;
    CHECK(pool_acquire(p, &c) == ST_OK);
    int pid = backend_pid(c);
    CHECK(pool_cmd(c, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY") == ST_OK);
    PGresult *r = pool_exec(c, &st_write, NULL);
    CHECK_STR(pool_sqlstate(r), "25006");
    CHECK(pool_result_err(c, r) == ST_EUNAVAIL);
    PQclear(r);
    pool_release(p, c);
    CHECK(pool_acquire(p, &c) == ST_OK);
    CHECK(backend_pid(c) != pid); /* a fresh connection, writable again */
    r = pool_exec(c, &st_write, NULL);
    CHECK(pool_result_err(c, r) == ST_OK);
    PQclear(r);
    pool_release(p, c);
    pool_free(p);
}

/* ---- behind a transaction-mode pooler: no session state, nothing prepared ---- */

static const struct db_stmt st_timeout = {
    "unit_pool_timeout", "SELECT current_setting('statement_timeout'), $1::int", 1};
static const struct db_stmt st_prepared = {"unit_pool_prepared",
                                           "SELECT count(*) FROM pg_prepared_statements", 0};
static const struct db_stmt st_sleep = {"unit_pool_sleep", "SELECT pg_sleep(0.5)", 0};

static void txn_pooler(const char *url, const struct logger *lg)
{
    struct pool *p = pool_new(url, 1, 5000, 250, lg);
    pool_set_txn_pooler(p, true);
    CHECK(pool_txn_pooler(p));
    struct pool_conn *c;
    CHECK(pool_acquire(p, &c) == ST_OK);
    const char *one[] = {"7"};
    for (int i = 0; i < 3; i++) {
        PGresult *r = pool_exec(c, &st_timeout, one);
        CHECK(pool_result_err(c, r) == ST_OK);
        CHECK_STR(PQgetvalue(r, 0, 0), "250ms"); /* set in the statement's transaction */
        CHECK_STR(PQgetvalue(r, 0, 1), "7");
        PQclear(r);
    }
    PGresult *r = PQexec(pool_conn_pg(c), "SHOW statement_timeout");
    CHECK_STR(PQgetvalue(r, 0, 0), "0"); /* the session keeps nothing */
    PQclear(r);
    r = pool_exec(c, &st_prepared, NULL);
    CHECK_STR(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
    r = pool_exec(c, &st_sleep, NULL);
    CHECK_STR(pool_sqlstate(r), "57014"); /* the per-transaction timeout holds */
    CHECK(pool_result_err(c, r) == ST_EUNAVAIL);
    PQclear(r);
    const struct db_stmt *sts[3] = {&st_timeout, &st_prepared, &st_timeout};
    const char *two[] = {"8"};
    const char *const *params[3] = {one, NULL, two};
    PGresult *out[3];
    pool_exec_batch(c, 3, sts, params, out);
    CHECK(pool_result_err(c, out[0]) == ST_OK && strcmp(PQgetvalue(out[0], 0, 1), "7") == 0);
    CHECK(pool_result_err(c, out[1]) == ST_OK && strcmp(PQgetvalue(out[1], 0, 0), "0") == 0);
    CHECK(pool_result_err(c, out[2]) == ST_OK && strcmp(PQgetvalue(out[2], 0, 1), "8") == 0);
    for (int i = 0; i < 3; i++)
        PQclear(out[i]);
    pool_release(p, c);
    pool_free(p);
}

/* ---- an error right behind the server's ready message goes to the log ---- */

/* A one-connection server that answers a startup packet with a complete start (trust,
 * the parameters libpq looks at, ready) and, in the same write, the error a backend
 * terminated at that moment sends. */
struct fake_server {
    int fd;
    pthread_t thread;
};

static size_t put_msg(unsigned char *out, char type, const void *body, size_t n)
{
    out[0] = (unsigned char)type;
    uint32_t len = htonl((uint32_t)(n + 4));
    memcpy(out + 1, &len, 4);
    memcpy(out + 5, body, n);
    return n + 5;
}

static size_t put_param(unsigned char *out, const char *k, const char *v)
{
    char body[128];
    size_t kn = strlen(k) + 1, vn = strlen(v) + 1;
    memcpy(body, k, kn);
    memcpy(body + kn, v, vn);
    return put_msg(out, 'S', body, kn + vn);
}

static void *fake_run(void *arg)
{
    struct fake_server *f = arg;
    int c = accept(f->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    unsigned char in[1024];
    uint32_t len = 0;
    size_t got = 0;
    while (got < 4 || got < len) { /* the startup packet: its length, then the rest */
        ssize_t r = read(c, in + got, sizeof(in) - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got >= 4) {
            memcpy(&len, in, 4);
            len = ntohl(len);
        }
    }
    unsigned char out[1024];
    size_t n = 0;
    const unsigned char auth_ok[4] = {0, 0, 0, 0};
    n += put_msg(out + n, 'R', auth_ok, 4);
    n += put_param(out + n, "server_version", "15.0");
    n += put_param(out + n, "client_encoding", "UTF8");
    n += put_param(out + n, "standard_conforming_strings", "on");
    n += put_param(out + n, "integer_datetimes", "on");
    n += put_param(out + n, "in_hot_standby", "off");
    n += put_param(out + n, "default_transaction_read_only", "off");
    const unsigned char key[8] = {0, 0, 0, 42, 0, 0, 0, 7};
    n += put_msg(out + n, 'K', key, 8);
    n += put_msg(out + n, 'Z', "I", 1);
    static const char fatal[] = "SFATAL\0VFATAL\0C57P01\0"
                                "Mterminating connection due to administrator command\0";
    n += put_msg(out + n, 'E', fatal, sizeof(fatal)); /* the closing NUL ends the fields */
    if (write(c, out, n) != (ssize_t)n)
        fprintf(stderr, "fake server: short write\n");
    usleep(200 * 1000);
    close(c);
    return NULL;
}

/* A listening socket on a free loopback port; url gets a conninfo for it (plain TCP,
 * then extra). */
static int listen_local(char *url, size_t cap, const char *extra)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 4) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&a, &alen) == 0);
    snprintf(url, cap,
             "host=127.0.0.1 port=%d user=u dbname=d sslmode=disable gssencmode=disable%s",
             ntohs(a.sin_port), extra);
    return fd;
}

static void fatal_behind_ready(void)
{
    struct fake_server f;
    char url[160];
    f.fd = listen_local(url, sizeof(url), "");
    CHECK(pthread_create(&f.thread, NULL, fake_run, &f) == 0);
    char *buf = NULL;
    size_t blen = 0;
    FILE *mem = open_memstream(&buf, &blen);
    struct logger lg = {LOG_WARN, mem};
    PGconn *pg = pool_connect(url, "steward", 3, &lg);
    CHECK(pg && PQstatus(pg) == CONNECTION_OK);
    PQfinish(pg);
    pthread_join(f.thread, NULL);
    close(f.fd);
    fclose(mem);
    /* read in the connect's own pass: a JSON line through the logger, not raw stderr */
    CHECK(buf && strstr(buf, "\"msg\":\"database notice\""));
    CHECK(buf && strstr(buf, "terminating connection due to administrator command"));
    free(buf);
}

/* A server that takes the connection and never answers: connect_timeout ends the
 * attempt (2 s here), logged, and no connection comes back. */
static void silent_server_times_out(void)
{
    char url[160];
    int fd = listen_local(url, sizeof(url), " connect_timeout=2");
    char *buf = NULL;
    size_t blen = 0;
    FILE *mem = open_memstream(&buf, &blen);
    struct logger lg = {LOG_WARN, mem};
    int64_t t0 = clock_now_ms();
    PGconn *pg = pool_connect(url, "steward", 3, &lg);
    int64_t took = clock_now_ms() - t0;
    CHECK(pg == NULL);
    CHECK(took >= 1900 && took < 3500);
    fclose(mem);
    CHECK(buf && strstr(buf, "timeout expired while connecting"));
    free(buf);
    close(fd);
}

int main(void)
{
    const char *url = unit_database_url();
    struct logger lg = {LOG_WARN, stderr};
    url_parameters_win();
    fatal_behind_ready();
    silent_server_times_out();
    contention(url, &lg);
    exhausted(url, &lg);
    unreachable(&lg);
    heals(url, &lg);
    read_only_discarded(url, &lg);
    txn_pooler(url, &lg);
    return unit_done();
}
