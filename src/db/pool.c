#include "steward/pool.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/clock.h"
#include "steward/err.h"

#define STMT_SLOTS 256 /* power of two; more statements than this run unprepared */

const int64_t pool_wait_bounds_us[POOL_WAIT_BUCKETS - 1] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000, 250000, 1000000};

struct pool_conn {
    struct pool *pool;
    PGconn *pg;
    const struct db_stmt *prepared[STMT_SLOTS];
    int nprepared;
    int execs; /* statements sent since checkout */
    /* reading a pipeline: results of the current statement so far, the one kept as its
     * answer, NULLs seen in a row, and whether a prepare sent in it failed */
    int dbpipe_seen;
    PGresult *dbpipe_keep;
    int dbpipe_nulls;
    bool dbpipe_prep_failed;
    bool dbpipe_prep_ended; /* the current statement's prepare has delivered its results */
    /* its server turned out read-only or shutting down: close it at release, so the next
     * checkout connects again (to whichever host is the writable primary now) */
    bool discard;
};

struct pool {
    char *conninfo;
    int size;
    int acquire_timeout_ms;
    int statement_timeout_ms;
    char statement_timeout_text[24];
    bool txn_pooler; /* behind a transaction-mode pooler: no session state */
    const struct logger *lg;

    struct pool_conn *conns;
    /* Free connections: a lock-free stack (Treiber) of slot numbers. The head packs
     * slot + 1 (0 = empty) in its low 32 bits and a change counter in the high 32
     * bits, so a pop cannot be fooled by a slot that left and came back (ABA). */
    _Atomic uint64_t free_head;
    _Atomic uint32_t *free_next; /* per slot: slot + 1 of the next free one */
    atomic_int busy;

    /* Only callers that found the stack empty take this lock, to sleep. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int waiting;
    atomic_int open;
    atomic_uint_fast64_t acquired_total;
    atomic_uint_fast64_t timeouts_total;
    atomic_uint_fast64_t wait_buckets[POOL_WAIT_BUCKETS];
    atomic_uint_fast64_t wait_sum_us;
    /* The circuit: true from a failed connection attempt until the next one succeeds.
     * While it is open every caller that needs a new connection gets ST_EUNAVAIL (503). */
    atomic_bool unreachable;
};

struct pool *pool_new(const char *conninfo, int size, int acquire_timeout_ms,
                      int statement_timeout_ms, const struct logger *lg)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->conninfo = strdup(conninfo ? conninfo : "");
    p->conns = calloc((size_t)size, sizeof(*p->conns));
    p->free_next = calloc((size_t)size, sizeof(*p->free_next));
    if (!p->conninfo || !p->conns || !p->free_next)
        goto fail;
    p->size = size;
    p->acquire_timeout_ms = acquire_timeout_ms;
    p->statement_timeout_ms = statement_timeout_ms;
    snprintf(p->statement_timeout_text, sizeof(p->statement_timeout_text), "%d",
             statement_timeout_ms);
    p->lg = lg;
    if (clock_cond_init(&p->cv) != 0)
        goto fail;
    pthread_mutex_init(&p->mu, NULL);
    for (int i = 0; i < size; i++) {
        p->conns[i].pool = p;
        atomic_init(&p->free_next[i], i + 1 < size ? (uint32_t)(i + 2) : 0);
    }
    atomic_init(&p->free_head, 1);
    return p;
fail:
    free(p->conninfo);
    free(p->conns);
    free((void *)p->free_next);
    free(p);
    return NULL;
}

static void conn_close(struct pool_conn *c)
{
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
        atomic_fetch_sub(&c->pool->open, 1);
    }
    memset(c->prepared, 0, sizeof(c->prepared));
    c->nprepared = 0;
    PQclear(c->dbpipe_keep);
    c->dbpipe_keep = NULL;
    c->dbpipe_seen = 0;
    c->dbpipe_nulls = 0;
    c->dbpipe_prep_failed = false;
    c->dbpipe_prep_ended = false;
    c->discard = false;
}

void pool_set_txn_pooler(struct pool *p, bool on)
{
    p->txn_pooler = on;
}

bool pool_txn_pooler(const struct pool *p)
{
    return p->txn_pooler;
}

/* The connect_timeout libpq would use (the URL's, else steward's): at least 2 s as in
 * libpq, 0 for none. */
static int effective_timeout_ms(PGconn *pg)
{
    PQconninfoOption *o = PQconninfo(pg);
    int s = 0;
    for (PQconninfoOption *x = o; x && x->keyword; x++)
        if (strcmp(x->keyword, "connect_timeout") == 0 && x->val)
            s = atoi(x->val);
    PQconninfoFree(o);
    return s <= 0 ? 0 : s < 2 ? 2000 : s * 1000;
}

/* Whether conninfo names more than one host (a multi-host URL or host list). */
static bool multi_host(const char *conninfo)
{
    PQconninfoOption *o = PQconninfoParse(conninfo, NULL);
    bool multi = false;
    for (PQconninfoOption *x = o; x && x->keyword; x++)
        if ((strcmp(x->keyword, "host") == 0 || strcmp(x->keyword, "hostaddr") == 0) && x->val &&
            strchr(x->val, ','))
            multi = true;
    PQconninfoFree(o);
    return multi;
}

/* Drives a started connection to its end within its connect_timeout. False when that
 * ran out first. */
static bool connect_finish(PGconn *pg)
{
    int timeout_ms = effective_timeout_ms(pg);
    int64_t deadline = clock_now_ms() + timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING; /* as libpq asks after a start */
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        struct pollfd pfd = {PQsocket(pg), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
        int wait = -1;
        if (timeout_ms > 0) {
            int64_t left = deadline - clock_now_ms();
            if (left <= 0)
                return false;
            wait = (int)left;
        }
        int r = poll(&pfd, 1, wait);
        if (r < 0 && errno != EINTR)
            return true; /* PQconnectPoll reports the socket's trouble */
        if (r == 0)
            return false;
        st = PQconnectPoll(pg);
    }
    return true;
}

/* steward's defaults, each used only when the operator's URL does not set it: an
 * expanded dbname (the URL) overrides the entries before it in the arrays. Keepalives
 * and tcp_user_timeout notice a primary that vanished without closing its sockets
 * within 5 + 3 x 2 = 11 s when idle and 10 s with data unacknowledged;
 * target_session_attrs=read-write skips standbys of a multi-host URL.
 *
 * The notice processor is set before the connection reads anything: an error that
 * arrives right behind the server's ready message (a backend terminated as it started)
 * is read in the same pass and, the connection being idle by then, handed to the
 * processor, which by default prints it raw on stderr. So a single-host connection is
 * driven here (PQconnectStartParams and PQconnectPoll, within its connect_timeout; a
 * host name with several addresses gets no second address after a timeout, only after
 * a refusal); a multi-host one keeps PQconnectdbParams, whose timeout moves on to the
 * next host (libpq has no call for that), and with it that narrow window. */
PGconn *pool_connect(const char *conninfo, const char *application_name, int connect_timeout_s,
                     const struct logger *lg)
{
    char ct[16];
    snprintf(ct, sizeof(ct), "%d", connect_timeout_s);
    const char *keys[] = {"application_name",
                          "connect_timeout",
                          "keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "tcp_user_timeout",
                          "target_session_attrs",
                          "dbname",
                          NULL};
    const char *vals[] = {application_name,         ct,  "1", "5", "2", "3", "10000", "read-write",
                          conninfo ? conninfo : "", NULL};
    if (multi_host(conninfo ? conninfo : "")) {
        PGconn *pg = PQconnectdbParams(keys, vals, 1);
        pool_log_notices(pg, lg);
        return pg;
    }
    PGconn *pg = PQconnectStartParams(keys, vals, 1);
    if (!pg)
        return NULL;
    pool_log_notices(pg, lg);
    if (PQstatus(pg) == CONNECTION_BAD || connect_finish(pg))
        return pg;
    if (lg)
        log_msg(lg, LOG_WARN, "database connection failed", "error",
                "timeout expired while connecting", NULL);
    PQfinish(pg);
    return NULL;
}

void pool_discard(struct pool_conn *c)
{
    c->discard = true;
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->size; i++)
        conn_close(&p->conns[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->conninfo);
    free(p->conns);
    free((void *)p->free_next);
    free(p);
}

/* libpq's notices (a server NOTICE, or an error that arrives while the connection is
 * idle, such as "FATAL: terminating connection due to administrator command") go to
 * stderr raw by default; here they become JSON log lines. */
static void notice_to_log(void *arg, const char *message)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", message ? message : "");
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    int saved = errno; /* libpq calls this mid-read: leave its errno as it was */
    log_msg(arg, LOG_WARN, "database notice", "detail", msg, NULL);
    errno = saved;
}

void pool_log_notices(PGconn *pg, const struct logger *lg)
{
    if (pg && lg)
        PQsetNoticeProcessor(pg, notice_to_log, (void *)lg);
}

static int conn_open(struct pool_conn *c)
{
    struct pool *p = c->pool;
    conn_close(c);
    c->pg = pool_connect(p->conninfo, "steward", 3, p->lg);
    if (!c->pg)
        return ST_EUNAVAIL;
    atomic_fetch_add(&p->open, 1);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c->pg));
        msg[strcspn(msg, "\n")] = '\0';
        log_msg(p->lg, LOG_WARN, "database connection failed", "error", msg, NULL);
        conn_close(c);
        atomic_store(&p->unreachable, true);
        return ST_EUNAVAIL;
    }
    /* behind a transaction-mode pooler, session settings would stay on whichever server
     * connection ran them: each statement sets its timeout in its own transaction */
    if (p->txn_pooler)
        return ST_OK;
    const char *params[] = {p->statement_timeout_text};
    PGresult *r = PQexecParams(c->pg, "SELECT set_config('statement_timeout', $1, false)", 1, NULL,
                               params, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    if (!ok) {
        conn_close(c);
        atomic_store(&p->unreachable, true);
        return ST_EUNAVAIL;
    }
    atomic_store(&p->unreachable, false);
    return ST_OK;
}

static void record_wait(struct pool *p, int64_t waited_us)
{
    int b = 0;
    while (b < POOL_WAIT_BUCKETS - 1 && waited_us > pool_wait_bounds_us[b])
        b++;
    atomic_fetch_add_explicit(&p->wait_buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->wait_sum_us, (uint64_t)waited_us, memory_order_relaxed);
}

static int pop_free(struct pool *p)
{
    uint64_t old = atomic_load_explicit(&p->free_head, memory_order_acquire);
    for (;;) {
        uint32_t top = (uint32_t)old;
        if (top == 0)
            return -1;
        uint32_t next = atomic_load_explicit(&p->free_next[top - 1], memory_order_relaxed);
        uint64_t head = ((old >> 32) + 1) << 32 | next;
        if (atomic_compare_exchange_weak_explicit(&p->free_head, &old, head, memory_order_acq_rel,
                                                  memory_order_acquire))
            return (int)top - 1;
    }
}

static void push_free(struct pool *p, int slot)
{
    uint64_t old = atomic_load_explicit(&p->free_head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&p->free_next[slot], (uint32_t)old, memory_order_relaxed);
        uint64_t head = ((old >> 32) + 1) << 32 | (uint32_t)(slot + 1);
        if (atomic_compare_exchange_weak_explicit(&p->free_head, &old, head, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
}

static void put_back(struct pool *p, struct pool_conn *c)
{
    push_free(p, (int)(c - p->conns));
    atomic_fetch_sub(&p->busy, 1);
    /* A waiter registers under mu before its last look at the stack, so signalling
     * under mu cannot slip between that look and its sleep. */
    if (atomic_load(&p->waiting) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Slow path: sleeps until a connection is pushed back or the deadline passes. */
static int wait_free(struct pool *p, int timeout_ms)
{
    struct deadline deadline = deadline_in_ms(timeout_ms);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->waiting, 1);
    int slot = pop_free(p);
    int rc = 0;
    while (slot < 0 && rc != ETIMEDOUT) {
        rc = clock_cond_wait_until(&p->cv, &p->mu, deadline);
        slot = pop_free(p);
    }
    atomic_fetch_sub(&p->waiting, 1);
    pthread_mutex_unlock(&p->mu);
    return slot;
}

/* Whether an idle connection is still usable: nothing to read and libpq agrees. An idle
 * connection has nothing to say, so input waiting on one (the notice of a terminated
 * backend, end of file after a restart) means it is gone. Checking at checkout, before
 * anything is sent, rather than retrying after, never runs a statement twice. */
static bool conn_idle_alive(struct pool_conn *c)
{
    struct pollfd pfd = {.fd = PQsocket(c->pg), .events = POLLIN};
    if (pfd.fd < 0)
        return false;
    if (poll(&pfd, 1, 0) > 0) {
        if (!PQconsumeInput(c->pg))
            return false;
        /* a NOTIFY on a pooled connection is not expected; anything else is fatal */
        return PQstatus(c->pg) == CONNECTION_OK && !PQisBusy(c->pg) &&
               !(pfd.revents & (POLLHUP | POLLERR));
    }
    return PQstatus(c->pg) == CONNECTION_OK;
}

int pool_acquire(struct pool *p, struct pool_conn **out)
{
    return pool_acquire_within(p, p->acquire_timeout_ms, out);
}

int pool_acquire_within(struct pool *p, int timeout_ms, struct pool_conn **out)
{
    int64_t start = clock_now_us();
    int slot = pop_free(p);
    if (slot < 0 && timeout_ms > 0)
        slot = wait_free(p, timeout_ms);
    if (slot < 0) {
        /* A try without a wait (timeout 0) that finds none free gave nothing up: it is
         * neither a timeout nor a wait. */
        if (timeout_ms > 0) {
            atomic_fetch_add(&p->timeouts_total, 1);
            record_wait(p, clock_now_us() - start);
        }
        return ST_EUNAVAIL;
    }
    atomic_fetch_add(&p->busy, 1);
    struct pool_conn *c = &p->conns[slot];
    record_wait(p, clock_now_us() - start);
    atomic_fetch_add_explicit(&p->acquired_total, 1, memory_order_relaxed);

    if (!c->pg || !conn_idle_alive(c)) {
        if (conn_open(c) != ST_OK) {
            put_back(p, c);
            return ST_EUNAVAIL;
        }
    }
    c->execs = 0;
    *out = c;
    return ST_OK;
}

void pool_release(struct pool *p, struct pool_conn *c)
{
    if (c->pg) {
        if (PQstatus(c->pg) != CONNECTION_OK || c->discard) {
            conn_close(c);
        } else {
            PGTransactionStatusType ts = PQtransactionStatus(c->pg);
            if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
                PGresult *r = PQexec(c->pg, "ROLLBACK");
                PQclear(r);
            } else if (ts != PQTRANS_IDLE) {
                conn_close(c);
            }
        }
    }
    put_back(p, c);
}

PGconn *pool_conn_pg(struct pool_conn *c)
{
    return c->pg;
}

static size_t slot_of(const struct db_stmt *st)
{
    uintptr_t h = (uintptr_t)st;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 40) & (STMT_SLOTS - 1);
}

/* Returns 1 when st is prepared on c, 0 when it was not and there is room, -1 full. */
static int prepared_find(struct pool_conn *c, const struct db_stmt *st, size_t *slot)
{
    /* a named statement lives on one server connection; a transaction-mode pooler hands
     * the next transaction another (PgBouncer before 1.21 keeps no protocol-level ones) */
    if (c->pool->txn_pooler)
        return -1;
    size_t i = slot_of(st);
    for (size_t n = 0; n < STMT_SLOTS; n++, i = (i + 1) & (STMT_SLOTS - 1)) {
        if (c->prepared[i] == st)
            return 1;
        if (!c->prepared[i]) {
            *slot = i;
            return c->nprepared < STMT_SLOTS * 3 / 4 ? 0 : -1;
        }
    }
    return -1;
}

#define SQL_TIMEOUT_LOCAL "SELECT set_config('statement_timeout', $1, true)"

/* Behind a transaction-mode pooler: the statement unnamed, after a transaction-local
 * statement_timeout, both before one Sync and so in one transaction (on one server
 * connection). Returns the statement's result, or the error that kept it from running;
 * a connection left in an unknown state is closed (pool_result_err: unavailable). */
static PGresult *exec_pooled(struct pool_conn *c, const struct db_stmt *st,
                             const char *const *params)
{
    PGconn *pg = c->pg;
    const char *tp[] = {c->pool->statement_timeout_text};
    if (!PQenterPipelineMode(pg))
        return PQmakeEmptyPGresult(pg, PGRES_FATAL_ERROR);
    bool sent = PQsendQueryParams(pg, SQL_TIMEOUT_LOCAL, 1, NULL, tp, NULL, NULL, 0) &&
                PQsendQueryParams(pg, st->sql, st->nparams, NULL, params, NULL, NULL, 0) &&
                PQpipelineSync(pg);
    PGresult *cause = NULL, *answer = NULL;
    bool synced = false;
    for (int cmd = 0; sent && cmd < 2; cmd++) {
        PGresult *r;
        while ((r = PQgetResult(pg)) != NULL) {
            ExecStatusType s = PQresultStatus(r);
            if (cmd == 0 && s == PGRES_FATAL_ERROR && !cause) {
                cause = r;
            } else if (cmd == 1 && !answer) {
                answer = r;
            } else {
                PQclear(r);
            }
            if (PQstatus(pg) != CONNECTION_OK)
                break;
        }
    }
    if (sent && PQstatus(pg) == CONNECTION_OK) {
        PGresult *r = PQgetResult(pg);
        synced = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
        PQclear(r);
    }
    if (!synced || !PQexitPipelineMode(pg)) {
        /* broken part way: nothing more can be read in order; keep the first error */
        PGresult *err = cause;
        if (!err && answer && PQresultStatus(answer) == PGRES_FATAL_ERROR)
            err = answer;
        if (err != answer)
            PQclear(answer);
        conn_close(c);
        return err ? err : PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    }
    if (cause) {
        PQclear(answer);
        return cause;
    }
    return answer ? answer : PQmakeEmptyPGresult(pg, PGRES_FATAL_ERROR);
}

static PGresult *exec_once(struct pool_conn *c, const struct db_stmt *st, const char *const *params)
{
    if (c->pool->txn_pooler)
        return exec_pooled(c, st, params);
    size_t slot = 0;
    int found = prepared_find(c, st, &slot);
    if (found < 0)
        return PQexecParams(c->pg, st->sql, st->nparams, NULL, params, NULL, NULL, 0);
    if (found == 0) {
        PGresult *r = PQprepare(c->pg, st->name, st->sql, st->nparams, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            return r;
        PQclear(r);
        c->prepared[slot] = st;
        c->nprepared++;
    }
    return PQexecPrepared(c->pg, st->name, st->nparams, params, NULL, NULL, 0);
}

/* A dead connection discovered by the first statement of a checkout is replaced and
 * the statement sent again: nothing of this checkout reached the server before. */
static bool retry_fresh(struct pool_conn *c, PGresult *r)
{
    if (c->execs != 0 || (c->pg && PQstatus(c->pg) != CONNECTION_BAD))
        return false;
    if (conn_open(c) != ST_OK)
        return false; /* the caller keeps r and reports the failure */
    PQclear(r);
    return true;
}

PGresult *pool_exec(struct pool_conn *c, const struct db_stmt *st, const char *const *params)
{
    if (!c->pg)
        return PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    PGresult *r = exec_once(c, st, params);
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_FATAL_ERROR && retry_fresh(c, r) && c->pg)
        r = exec_once(c, st, params);
    c->execs++;
    return r;
}

/* ------------------------------------------------------------------------------------
 * Pipelined batches
 * ---------------------------------------------------------------------------------- */

/* Queues statement st, with its Sync when sync, preparing it first when this connection
 * has not (*prepared_now tells). Returns false when libpq refused (out of memory,
 * broken). */
static bool batch_queue(struct pool_conn *c, const struct db_stmt *st, const char *const *params,
                        bool *prepared_now, bool sync)
{
    size_t slot = 0;
    int found = prepared_find(c, st, &slot);
    *prepared_now = false;
    if (found < 0)
        return PQsendQueryParams(c->pg, st->sql, st->nparams, NULL, params, NULL, NULL, 0) &&
               (!sync || PQpipelineSync(c->pg));
    if (found == 0) {
        if (!PQsendPrepare(c->pg, st->name, st->sql, st->nparams, NULL))
            return false;
        /* Counted as prepared from now on; a failed prepare closes the connection
         * after the batch, which forgets the whole cache. */
        c->prepared[slot] = st;
        c->nprepared++;
        *prepared_now = true;
    }
    return PQsendQueryPrepared(c->pg, st->name, st->nparams, params, NULL, NULL, 0) &&
           (!sync || PQpipelineSync(c->pg));
}

/* Waits until a result can be taken without blocking, sending what is still buffered
 * meanwhile. Returns false when the connection broke or stayed silent past the limit. */
static bool batch_wait(struct pool_conn *c, struct deadline deadline)
{
    for (;;) {
        int pending = PQflush(c->pg);
        if (pending < 0)
            return false;
        if (!PQisBusy(c->pg))
            return true;
        int64_t left_ms = deadline_left_ms(deadline);
        if (left_ms <= 0)
            return false;
        struct pollfd pfd = {.fd = PQsocket(c->pg), .events = POLLIN | (pending ? POLLOUT : 0)};
        int rc = poll(&pfd, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (rc < 0 && errno != EINTR)
            return false;
        if (rc > 0 && (pfd.revents & (POLLIN | POLLERR | POLLHUP)) && !PQconsumeInput(c->pg))
            return false;
    }
}

static bool result_ok(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* Hands over what was kept for the statement just completed and resets for the next. */
static int dbpipe_hand_over(struct pool_conn *c, PGresult **out)
{
    *out = c->dbpipe_keep ? c->dbpipe_keep : PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    c->dbpipe_keep = NULL;
    c->dbpipe_seen = 0;
    c->dbpipe_prep_ended = false;
    return 1;
}

int pool_pipe_next(struct pool_conn *c, bool prepared_now, bool sync_after, PGresult **out)
{
    for (;;) {
        if (PQisBusy(c->pg))
            return 0;
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            /* The end of one command's results: the prepare's, or the statement's. */
            if (c->dbpipe_seen == 0) {
                if (++c->dbpipe_nulls > 2)
                    return -1; /* nothing more is queued: libpq lost track of the pipeline */
                continue;
            }
            if (prepared_now && c->dbpipe_seen == 1 && !c->dbpipe_prep_ended) {
                c->dbpipe_prep_ended = true;
                continue;
            }
            if (!sync_after)
                return dbpipe_hand_over(c, out); /* inside a group: no Sync of its own */
            continue;
        }
        c->dbpipe_nulls = 0;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (!sync_after)
                return -1; /* a Sync where none was sent: libpq lost track */
            return dbpipe_hand_over(c, out);
        }
        bool is_prepare = prepared_now && c->dbpipe_seen == 0;
        c->dbpipe_seen++;
        if (is_prepare && !result_ok(r))
            c->dbpipe_prep_failed = true;
        if (c->dbpipe_keep && !result_ok(c->dbpipe_keep)) {
            PQclear(r); /* the query aborted by a failed prepare: keep the cause */
        } else {
            PQclear(c->dbpipe_keep);
            c->dbpipe_keep = r;
        }
    }
}

/* Reads the results of n queued statements into out. Returns how many statements were
 * completed; fewer than n means the connection failed. */
static size_t batch_read(struct pool_conn *c, size_t n, const bool *prepared_now, PGresult **out)
{
    struct deadline deadline = deadline_in_ms((int64_t)c->pool->statement_timeout_ms + 5000);
    size_t done = 0;
    while (done < n) {
        if (!batch_wait(c, deadline))
            break;
        int rc = pool_pipe_next(c, prepared_now[done], true, &out[done]);
        if (rc < 0)
            break;
        done += (size_t)rc;
    }
    return done;
}

static void batch_fail_rest(size_t from, size_t n, PGresult **out)
{
    for (size_t i = from; i < n; i++)
        out[i] = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
}

/* One attempt: sends everything, reads everything. Returns the statements completed. */
static size_t batch_once(struct pool_conn *c, size_t n, const struct db_stmt *const *st,
                         const char *const *const *params, PGresult **out)
{
    bool prepared_now[POOL_BATCH_MAX];
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!batch_queue(c, st[i], params[i], &prepared_now[i], true))
            return 0;
    }
    size_t done = batch_read(c, n, prepared_now, out);
    if (done == n && PQexitPipelineMode(c->pg) && PQsetnonblocking(c->pg, 0) == 0)
        return n;
    if (done == n) {
        for (size_t i = 0; i < n; i++)
            PQclear(out[i]);
        return 0;
    }
    return done;
}

void pool_exec_batch(struct pool_conn *c, size_t n, const struct db_stmt *const *st,
                     const char *const *const *params, PGresult **out)
{
    if (n == 0)
        return;
    if (!c->pg || n > POOL_BATCH_MAX) {
        batch_fail_rest(0, n, out);
        return;
    }
    if (c->pool->txn_pooler) {
        /* one transaction per round trip: PgBouncer 1.18 may hand a server back to its
         * pool at the first ReadyForQuery while more of a pipeline is on its way */
        for (size_t i = 0; i < n; i++)
            out[i] = c->pg ? pool_exec(c, st[i], params[i])
                           : PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
        return;
    }
    size_t done = batch_once(c, n, st, params, out);
    c->execs += (int)n;
    if (done < n) {
        /* The connection is in an unknown state part way through a pipeline: close it,
         * so what is missing reads as unavailable and the next checkout reconnects. */
        conn_close(c);
        batch_fail_rest(done, n, out);
    } else if (c->dbpipe_prep_failed) {
        conn_close(c); /* forget the statement marked prepared that is not */
    }
}

bool pool_pipe_begin(struct pool_conn *c)
{
    return c->pg && PQsetnonblocking(c->pg, 1) == 0 && PQenterPipelineMode(c->pg);
}

bool pool_pipe_send(struct pool_conn *c, const struct db_stmt *st, const char *const *params,
                    bool *prepared_now, bool sync)
{
    c->execs++;
    return batch_queue(c, st, params, prepared_now, sync);
}

bool pool_pipe_sync(struct pool_conn *c)
{
    return PQpipelineSync(c->pg) == 1;
}

bool pool_pipe_prepared(struct pool_conn *c, const struct db_stmt *st)
{
    size_t slot = 0;
    return c->pg && prepared_find(c, st, &slot) == 1;
}

int pool_pipe_flush(struct pool_conn *c)
{
    return PQflush(c->pg);
}

int pool_pipe_socket(struct pool_conn *c)
{
    return c->pg ? PQsocket(c->pg) : -1;
}

bool pool_pipe_read(struct pool_conn *c)
{
    return PQconsumeInput(c->pg) == 1;
}

void pool_pipe_end(struct pool_conn *c, bool broken)
{
    if (!c->pg)
        return;
    if (broken || c->discard || c->dbpipe_prep_failed || !PQexitPipelineMode(c->pg) ||
        PQsetnonblocking(c->pg, 0) != 0)
        conn_close(c);
}

int pool_size(const struct pool *p)
{
    return p->size;
}

int pool_statement_timeout_ms(const struct pool *p)
{
    return p->statement_timeout_ms;
}

int pool_cmd(struct pool_conn *c, const char *sql)
{
    if (!c->pg)
        return ST_EUNAVAIL;
    PGresult *r = PQexecParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_FATAL_ERROR && retry_fresh(c, r))
        r = PQexecParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
    c->execs++;
    int rc = pool_result_err(c, r);
    PQclear(r);
    return rc;
}

const char *pool_sqlstate(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

int pool_result_err(struct pool_conn *c, const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK)
        return ST_OK;
    if (!c->pg || PQstatus(c->pg) != CONNECTION_OK)
        return ST_EUNAVAIL;
    const char *st = pool_sqlstate(r);
    /* A read-only server (a standby, or a primary demoted under us) or one shutting
     * down: this connection will not get better; the next checkout connects afresh. */
    if (strcmp(st, "25006") == 0 || strncmp(st, "57P", 3) == 0 || strncmp(st, "08", 2) == 0) {
        c->discard = true;
        return ST_EUNAVAIL;
    }
    if (strcmp(st, "57014") == 0 || strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 ||
        strcmp(st, "53300") == 0 || strcmp(st, "55P03") == 0 || strcmp(st, "53100") == 0)
        return ST_EUNAVAIL;
    if (strcmp(st, "23505") == 0 || strcmp(st, "23503") == 0)
        return ST_ECONFLICT;
    if (strncmp(st, "22", 2) == 0 || strcmp(st, "23514") == 0)
        return ST_EINVALID;
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    msg[strcspn(msg, "\n")] = '\0';
    log_msg(c->pool->lg, LOG_ERROR, "database error", "sqlstate", st, "error", msg, NULL);
    return ST_EINTERNAL;
}

static bool conn_lost(struct pool_conn *c)
{
    return !c->pg || PQstatus(c->pg) != CONNECTION_OK;
}

int pool_tx(struct pool *p, pool_tx_fn fn, void *arg)
{
    for (int attempt = 0;; attempt++) {
        struct pool_conn *c;
        int rc = pool_acquire(p, &c);
        if (rc != ST_OK)
            return rc;
        rc = pool_cmd(c, "BEGIN");
        if (rc == ST_OK) {
            rc = fn(c, arg);
            if (rc == ST_OK)
                rc = pool_cmd(c, "COMMIT");
            else if (!conn_lost(c))
                pool_cmd(c, "ROLLBACK");
            else if (attempt == 0) {
                /* lost before COMMIT was sent: nothing was committed, try once more */
                pool_release(p, c);
                continue;
            }
        }
        pool_release(p, c);
        return rc;
    }
}

int pool_with(struct pool *p, pool_tx_fn fn, void *arg)
{
    struct pool_conn *c;
    int rc = pool_acquire(p, &c);
    if (rc != ST_OK)
        return rc;
    rc = fn(c, arg);
    pool_release(p, c);
    return rc;
}

void pool_stats(struct pool *p, struct pool_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->busy = atomic_load(&p->busy);
    out->size = p->size;
    out->open = atomic_load(&p->open);
    out->waiting = atomic_load(&p->waiting);
    out->acquired_total = atomic_load(&p->acquired_total);
    out->timeouts_total = atomic_load(&p->timeouts_total);
    for (int i = 0; i < POOL_WAIT_BUCKETS; i++) {
        out->wait_buckets[i] = atomic_load(&p->wait_buckets[i]);
        out->wait_count += out->wait_buckets[i];
    }
    out->wait_sum_s = (double)atomic_load(&p->wait_sum_us) / 1e6;
    out->unreachable = atomic_load(&p->unreachable);
}
