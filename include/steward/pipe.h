/* Pipelined execution of single statements for the request hot paths.
 *
 * A handler that needs one statement (a bond read, an atomic consume) submits a job and
 * returns; a few database threads take every job queued meanwhile, send them to
 * PostgreSQL in one pipeline on one pooled connection (pool_exec_batch) and run each
 * job's completion with its result. Many requests are in flight with few threads and
 * few round trips, and the caller's thread never waits on the database.
 *
 * Submitting is lock-free (a pushed stack); a mutex is taken only to wake a sleeping
 * database thread. */
#ifndef STEWARD_PIPE_H
#define STEWARD_PIPE_H

#include <libpq-fe.h>
#include <stdint.h>

#include "steward/log.h"
#include "steward/pool.h"

#define PIPE_MAX_PARAMS 4

struct pipe_job;
/* Runs once per submitted job, on a database thread (or on the submitting thread when
 * the job runs inline). r is the statement's result, owned by the callee (PQclear it),
 * NULL when the statement never ran; rc is its classification (ST_OK, ST_EUNAVAIL, ...,
 * as pool_result_err). The job may be submitted again or freed from inside. */
typedef void (*pipe_done_fn)(struct pipe_job *job, PGresult *r, int rc);

/* Filled by the caller; the job and the strings params point to stay alive until done. */
struct pipe_job {
    const struct db_stmt *st;
    const char *params[PIPE_MAX_PARAMS];
    pipe_done_fn done;
    void *arg;
    /* private to the pipe */
    struct pipe_job *next;
    int64_t queued_us;
};

struct pipe;

struct pipe_stats {
    uint64_t jobs;
    uint64_t batches;
    uint64_t expired; /* jobs that waited longer than the acquire timeout: unavailable */
};

/* Starts threads database threads on pool (borrowed; it must outlive the pipe). A job
 * that waited longer than max_wait_ms for its turn completes with ST_EUNAVAIL, as a pool
 * acquire that timed out would. Returns NULL when out of memory or threads fail. */
struct pipe *pipe_new(struct pool *pool, int threads, int max_wait_ms, const struct logger *lg);
/* Queues job. Returns ST_OK, or ST_EUNAVAIL once the pipe is stopping (done is not run
 * then: the caller still owns the job). */
int pipe_submit(struct pipe *p, struct pipe_job *job);
/* Runs job at once on the calling thread on a connection of pool: the path for callers
 * built without a pipe (tools, tests). done runs before this returns. */
void pipe_run_inline(struct pool *pool, struct pipe_job *job);
void pipe_stats(struct pipe *p, struct pipe_stats *out);
/* Completes every queued job, joins the threads and frees the pipe (NULL is fine).
 * Jobs submitted while it stops are completed with ST_EUNAVAIL. */
void pipe_free(struct pipe *p);

#endif
