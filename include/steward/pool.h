/* A fixed-size pool of libpq connections shared by the HTTP and WebSocket layers.
 *
 * Connections open lazily on first use and carry statement_timeout. A statement is
 * prepared once per connection (by its struct db_stmt address) and reused. A
 * connection found broken is reset on its next checkout, so the service heals by
 * itself when PostgreSQL comes back. Acquire waits at most the configured time. */
#ifndef STEWARD_POOL_H
#define STEWARD_POOL_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "steward/log.h"

/* A statement with a stable address (declare it static const). */
struct db_stmt {
    const char *name; /* unique among statements: the prepared statement name */
    const char *sql;
    int nparams;
};

struct pool;
struct pool_conn;

#define POOL_WAIT_BUCKETS 12
/* Upper bounds in microseconds of the pool wait histogram; the last bucket is +Inf. */
extern const int64_t pool_wait_bounds_us[POOL_WAIT_BUCKETS - 1];

struct pool_stats {
    int size;
    int open;    /* connections currently established */
    int busy;    /* checked out */
    int waiting; /* callers waiting for a connection */
    uint64_t acquired_total;
    uint64_t timeouts_total;
    uint64_t wait_buckets[POOL_WAIT_BUCKETS]; /* cumulative counts per bucket (not summed) */
    uint64_t wait_count;
    double wait_sum_s;
    /* the last connection attempt failed (and none succeeded since): callers needing a
     * new connection are answered 503 until one does */
    bool unreachable;
};

/* Creates a pool; nothing connects yet. The conninfo string is copied. Returns NULL
 * when out of memory. Free with pool_free once no connection is checked out. */
struct pool *pool_new(const char *conninfo, int size, int acquire_timeout_ms,
                      int statement_timeout_ms, const struct logger *lg);
void pool_free(struct pool *p);
/* Routes pg's notices through lg as JSON log lines (every pooled connection gets it;
 * connections opened elsewhere call it themselves). */
void pool_log_notices(PGconn *pg, const struct logger *lg);

/* Behind a transaction-mode pooler (STEWARD_DATABASE_POOLER=transaction): statements
 * run unnamed (never prepared), each after a transaction-local statement_timeout in the
 * same transaction, and one per round trip (no pipeline of several transactions).
 * Set before the first acquire. */
void pool_set_txn_pooler(struct pool *p, bool on);
bool pool_txn_pooler(const struct pool *p);

/* Opens a libpq connection on conninfo (a URI or conninfo string) with steward's
 * defaults for whatever it does not set: application_name, connect_timeout, TCP
 * keepalives (idle 5 s, interval 2 s, 3 probes), tcp_user_timeout 10 s and
 * target_session_attrs=read-write. Parameters in conninfo always win. Its notices go
 * through lg (pool_log_notices) from the start. Returns the connection (check
 * PQstatus), or NULL when out of memory or when connect_timeout ran out (logged). */
PGconn *pool_connect(const char *conninfo, const char *application_name, int connect_timeout_s,
                     const struct logger *lg);

/* Marks c to be closed when released (its server is a standby, say). */
void pool_discard(struct pool_conn *c);

/* Checks a connection out, waiting up to the acquire timeout. Opens or resets it as
 * needed (also one found dead while idle: input waiting on it means its backend ended). Returns
 * ST_OK, or ST_EUNAVAIL when the wait timed out or the database could not be reached. Every
 * successful acquire is paired with pool_release. */
int pool_acquire(struct pool *p, struct pool_conn **out);
/* Same with its own bound on the wait (0 = only a free connection), for callers that
 * must not hold up the work that triggered them (the lessons journal, the warm-up, a
 * lane's extra connection). A try with 0 that finds none free is not counted as a
 * timeout. */
int pool_acquire_within(struct pool *p, int timeout_ms, struct pool_conn **out);
/* Returns a connection. A connection left inside a transaction is rolled back. */
void pool_release(struct pool *p, struct pool_conn *c);

/* Runs a prepared statement with text parameters (NULL = SQL NULL); prepares it on this
 * connection first if needed. The first statement after a checkout is retried once on
 * a fresh connection when the old one turns out to be dead. Returns a PGresult the
 * caller clears (never NULL), and classifies failures with pool_result_err. */
PGresult *pool_exec(struct pool_conn *c, const struct db_stmt *st, const char *const *params);
/* Runs n independent statements on c in one pipeline (one round trip for all of them).
 * Each is its own implicit transaction, so one failing leaves the others alone, exactly
 * as n pool_exec calls would. out[i] receives statement i's result (never NULL; the
 * caller clears them and classifies them with pool_result_err before releasing c).
 * Statements are prepared on the way when needed; nothing is sent twice (a connection
 * found dead at checkout was already replaced then). A connection that dies or stays
 * silent for statement_timeout + 5 s part way is closed and the statements without a
 * result fail as unavailable. */
#define POOL_BATCH_MAX 64 /* statements per pool_exec_batch call */
void pool_exec_batch(struct pool_conn *c, size_t n, const struct db_stmt *const *st,
                     const char *const *const *params, PGresult **out);
/* An open-ended pipeline on one checked-out connection, driven by an event loop (the
 * pipe's lanes): statements are sent whenever they arrive, results are read whenever the
 * socket has input, always in the order sent.
 * begin puts c in pipeline and non-blocking mode (false: c is unusable: end it broken).
 * send queues a statement, preparing it first when needed (*prepared_now tells; pass it
 * back to next), with its Sync when sync; else it shares the transaction of the
 * statements up to the next Sync (sync sends one), and an error in one of them makes
 * the rest of that group fail with PGRES_PIPELINE_ABORTED. libpq writes to the socket
 * at every Sync, so a group of reads costs one write. prepared says whether st is
 * prepared on c already (a group should not prepare: a prepare aborted by an earlier
 * error would be taken as done). flush writes what is buffered: 0 done, 1 more to write
 * (wait for the socket to be writable), -1 broken. read takes the input waiting on the
 * socket (false: broken). next hands over the oldest statement's result (sync_after: a
 * Sync followed it): 1 and *out set (never NULL; classify with pool_result_err), 0 when
 * its result has not fully arrived, -1 when the connection lost track. end leaves
 * pipeline mode once nothing is
 * in flight; with broken, or after a failed prepare, it closes the connection instead
 * (the next checkout reconnects). Release c with pool_release after end. */
bool pool_pipe_begin(struct pool_conn *c);
bool pool_pipe_send(struct pool_conn *c, const struct db_stmt *st, const char *const *params,
                    bool *prepared_now, bool sync);
bool pool_pipe_sync(struct pool_conn *c);
bool pool_pipe_prepared(struct pool_conn *c, const struct db_stmt *st);
int pool_pipe_flush(struct pool_conn *c);
int pool_pipe_socket(struct pool_conn *c);
bool pool_pipe_read(struct pool_conn *c);
int pool_pipe_next(struct pool_conn *c, bool prepared_now, bool sync_after, PGresult **out);
void pool_pipe_end(struct pool_conn *c, bool broken);
int pool_statement_timeout_ms(const struct pool *p);
int pool_size(const struct pool *p);

/* Runs a plain command without parameters (BEGIN, COMMIT, ROLLBACK). Returns ST_* */
int pool_cmd(struct pool_conn *c, const char *sql);

/* Maps a result to ST_OK (tuples or command ok), ST_EUNAVAIL (connection lost,
 * statement timeout, server shutting down or read-only, serialization failure: a
 * connection lost, shutting down or read-only is also discarded at release), ST_ECONFLICT
 * (unique violation) or ST_EINTERNAL (logged at error). */
int pool_result_err(struct pool_conn *c, const PGresult *r);

/* The SQLSTATE of a failed result, or "" */
const char *pool_sqlstate(const PGresult *r);

PGconn *pool_conn_pg(struct pool_conn *c);

void pool_stats(struct pool *p, struct pool_stats *out);

/* Runs fn(conn, arg) on a checked-out connection inside BEGIN/COMMIT. fn returns ST_*;
 * anything but ST_OK rolls back. When the transaction fails because the connection was
 * lost before anything committed, it is retried once on a fresh connection. */
typedef int (*pool_tx_fn)(struct pool_conn *c, void *arg);
int pool_tx(struct pool *p, pool_tx_fn fn, void *arg);

/* Like pool_tx without the transaction: fn decides. */
int pool_with(struct pool *p, pool_tx_fn fn, void *arg);

#endif
