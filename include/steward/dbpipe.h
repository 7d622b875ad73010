/* Pipelined execution of single statements for the request hot paths.
 *
 * A handler that needs one statement (a bond read, an atomic consume) submits a job and
 * returns. On an HTTP event-loop thread the job goes to that thread's lane (below): the
 * loop itself sends it, pipelined with every other statement of its requests, and runs
 * the completion when the result arrives. Elsewhere a few database threads take every
 * job queued meanwhile, send them in one pipeline on one pooled connection
 * (pool_exec_batch) and run each job's completion with its result. Either way many
 * requests are in flight with few threads and few round trips, and the caller's thread
 * never waits on the database.
 *
 * Submitting is lock-free (a pushed stack); a mutex is taken only to wake a sleeping
 * database thread. */
#ifndef STEWARD_DBPIPE_H
#define STEWARD_DBPIPE_H

#include <libpq-fe.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

#include "steward/log.h"
#include "steward/pool.h"

#define DBPIPE_MAX_PARAMS 4
#define DBPIPE_LANE_FDS 4 /* connections a lane may hold at once (one unless some stall) */

struct dbpipe_job;
/* Runs once per submitted job, on a database thread (or on the submitting thread when
 * the job runs inline). r is the statement's result, owned by the callee (PQclear it),
 * NULL when the statement never ran; rc is its classification (ST_OK, ST_EUNAVAIL, ...,
 * as pool_result_err). The job may be submitted again or freed from inside. */
typedef void (*dbpipe_done_fn)(struct dbpipe_job *job, PGresult *r, int rc);

/* Filled by the caller; the job and the strings params point to stay alive until done. */
struct dbpipe_job {
    const struct db_stmt *st;
    const char *params[DBPIPE_MAX_PARAMS];
    dbpipe_done_fn done;
    void *arg;
    /* A read without side effects: a lane may run it in one transaction with other such
     * reads (one Sync for the group), and again when an earlier read of the group
     * failed. */
    bool read_only;
    /* Set for a write of one statement that a lane may run in one transaction with other
     * such writes (one Sync for the group), as this statement instead of st. The lane
     * sends a group in ascending order of lock_key, so groups take their row locks in
     * one order; completes none of its jobs before the group committed; and when any of
     * them failed (so all were rolled back), runs each again alone, as st. Only for a
     * statement that locks no row but the one lock_key names and may run again after a
     * rollback; group_st should bound its own lock waits (lock_timeout), since every row
     * the group locked before stays locked while it waits. */
    const struct db_stmt *group_st;
    const char *lock_key;
    /* private to the pipe */
    struct dbpipe_job *next;
    int64_t queued_us;
    bool prepared_now;
    bool sync_after; /* a Sync was sent right after it */
    bool alone;      /* never grouped (again): a group it was in failed */
    bool in_group;   /* sent in a group of writes */
    PGresult *held;  /* its result, kept until its group committed */
};

struct dbpipe;

struct dbpipe_stats {
    uint64_t jobs;
    uint64_t batches;
    uint64_t expired;   /* jobs that waited longer than the acquire timeout: unavailable */
    uint64_t regrouped; /* statements sent again because another of their group failed */
};

/* Starts threads database threads on pool (borrowed; it must outlive the pipe) and
 * allows up to lanes event-loop lanes. A job that waited longer than max_wait_ms for its
 * turn completes with ST_EUNAVAIL, as a pool acquire that timed out would. Returns NULL
 * when out of memory or threads fail. */
struct dbpipe *dbpipe_new(struct pool *pool, int threads, int lanes, int max_wait_ms,
                          const struct logger *lg);
/* Queues job: on the calling thread's lane when it has one, else for the database
 * threads. Returns ST_OK, or ST_EUNAVAIL once the pipe is stopping (done is not run
 * then: the caller still owns the job). */
int dbpipe_submit(struct dbpipe *p, struct dbpipe_job *job);

/* Lanes: an event-loop thread (the HTTP server's) that attaches a lane has the jobs it
 * submits sent by itself, on a pooled connection the lane holds while statements are in
 * flight, pipelined back to back: no thread hand-off and no lock per request. All lane
 * functions run on the attaching thread.
 * attach returns NULL when every lane is taken (that thread then uses the database
 * threads). flush sends what was queued since the last call and says what to wait for:
 * it fills up to DBPIPE_LANE_FDS descriptors with their events, returns how many, and sets
 * *timeout_ms (-1 for none). service runs after every wait with those descriptors and
 * their revents: it reads results, runs completions, which may submit more (sent by the
 * next flush), and handles the timeouts that passed.
 * busy tells whether anything is queued or in flight; detach, once not busy, gives the
 * connection back (anything still pending completes as unavailable). */
struct dbpipe_lane;
struct dbpipe_lane *dbpipe_lane_attach(struct dbpipe *p);
int dbpipe_lane_flush(struct dbpipe_lane *ln, struct pollfd *fds, int *timeout_ms);
void dbpipe_lane_service(struct dbpipe_lane *ln, const struct pollfd *fds, int n);
bool dbpipe_lane_busy(const struct dbpipe_lane *ln);
void dbpipe_lane_detach(struct dbpipe_lane *ln);
/* Runs job at once on the calling thread on a connection of pool: the path for callers
 * built without a pipe (tools, tests). done runs before this returns. */
void dbpipe_run_inline(struct pool *pool, struct dbpipe_job *job);
void dbpipe_stats(struct dbpipe *p, struct dbpipe_stats *out);
/* Completes every queued job, joins the threads and frees the pipe (NULL is fine).
 * Jobs submitted while it stops are completed with ST_EUNAVAIL. */
void dbpipe_free(struct dbpipe *p);

#endif
