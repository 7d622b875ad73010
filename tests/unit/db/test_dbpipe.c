/* The statement pipe (steward/dbpipe.h) against a real PostgreSQL: jobs submitted from
 * many threads complete exactly once each with their own result, in fewer round trips
 * than statements; a failing statement fails only its own job (a lane's group of reads
 * or writes runs the others again alone); and with the database gone or a backend
 * killed, every job completes as unavailable instead of hanging. */
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/dbpipe.h"
#include "steward/err.h"
#include "steward/pool.h"
#include "steward/clock.h"
#include "unit.h"

static const struct db_stmt st_double = {"unit_dbpipe_double", "SELECT $1::int * 2", 1};
/* fails with division_by_zero (22012, ST_EINVALID) for 0 */
static const struct db_stmt st_divide = {"unit_dbpipe_divide", "SELECT 1000 / $1::int", 1};
static const struct db_stmt st_sleep = {"unit_dbpipe_sleep",
                                        "SELECT pg_sleep($1::float8), 'unit_dbpipe_sleep'", 1};
/* fails with check_violation (23514, ST_EINVALID) for a negative value */
static const struct db_stmt st_insert = {
    "unit_dbpipe_insert", "INSERT INTO unit_dbpipe_rows (k, v) VALUES ($1, $2::int)", 2};

/* A job and what its completion saw. */
struct tjob {
    struct dbpipe_job job; /* first: the completion gets &job */
    char p0[16], p1[16];
    long want;       /* the value the statement should answer */
    atomic_int runs; /* completions */
    int rc;
    long got; /* the answer, -1 for none */
    char sqlstate[6];
    atomic_int *completed; /* counts completions of a whole round */
};

static void on_done(struct dbpipe_job *job, PGresult *r, int rc)
{
    struct tjob *t = (struct tjob *)job;
    t->rc = rc;
    t->got = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1
                 ? strtol(PQgetvalue(r, 0, 0), NULL, 10)
                 : -1;
    snprintf(t->sqlstate, sizeof(t->sqlstate), "%s", pool_sqlstate(r));
    PQclear(r);
    atomic_fetch_add(&t->runs, 1);
    atomic_fetch_add(t->completed, 1);
}

static void set_job(struct tjob *t, const struct db_stmt *st, int v, atomic_int *completed)
{
    memset(t, 0, sizeof(*t));
    t->job.st = st;
    snprintf(t->p0, sizeof(t->p0), "%d", v);
    t->job.params[0] = t->p0;
    t->job.done = on_done;
    t->want = st == &st_double ? 2L * v : v != 0 ? 1000 / v : -1;
    t->got = -2;
    t->completed = completed;
}

/* Waits until *completed reaches want (at most 60 s); false when it did not. */
static bool wait_count(atomic_int *completed, int want)
{
    for (int64_t end = clock_now_ms() + 60000;
         atomic_load(completed) < want && clock_now_ms() < end;)
        clock_sleep_us(1000);
    return atomic_load(completed) == want;
}

/* Runs the calling thread's lane until *completed reaches want (at most 60 s). */
static bool drive_lane(struct dbpipe_lane *ln, atomic_int *completed, int want)
{
    for (int64_t end = clock_now_ms() + 60000;
         atomic_load(completed) < want && clock_now_ms() < end;) {
        struct pollfd fds[DBPIPE_LANE_FDS];
        int timeout = -1;
        int n = dbpipe_lane_flush(ln, fds, &timeout);
        poll(fds, (nfds_t)n, timeout < 0 || timeout > 50 ? 50 : timeout);
        dbpipe_lane_service(ln, fds, n);
    }
    return atomic_load(completed) == want;
}

/* Runs sql (one parameter or none) on its own connection; returns the first value. */
static long query_one(const char *url, const char *sql, const char *param)
{
    PGconn *pg = PQconnectdb(url);
    long v = -1;
    if (PQstatus(pg) == CONNECTION_OK) {
        PGresult *r = PQexecParams(pg, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0);
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_TUPLES_OK && PQntuples(r) == 1)
            v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        else if (s == PGRES_COMMAND_OK)
            v = 0;
        PQclear(r);
    }
    PQfinish(pg);
    return v;
}

/* ---- many submitters, database threads: exactly once, correct, grouped ---- */

#define SUBMITTERS 8
#define PER_SUBMITTER 250
#define JOBS (SUBMITTERS * PER_SUBMITTER)

struct burst {
    struct dbpipe *pipe;
    pthread_barrier_t start;
    struct tjob jobs[JOBS];
    atomic_int completed;
    atomic_int refused;
};

struct submit_arg {
    struct burst *b;
    int from, count;
};

static void *submit_range(void *arg)
{
    struct submit_arg *a = arg;
    pthread_barrier_wait(&a->b->start);
    for (int i = a->from; i < a->from + a->count; i++)
        if (dbpipe_submit(a->b->pipe, &a->b->jobs[i].job) != ST_OK)
            atomic_fetch_add(&a->b->refused, 1);
    return NULL;
}

static void concurrent_submits(const char *url, const struct logger *lg)
{
    /* One connection, held here while the jobs arrive: the database threads wait for it,
     * so what queues meanwhile must go out in shared round trips. */
    struct pool *pool = pool_new(url, 1, 60000, 10000, lg);
    static struct burst b;
    b.pipe = dbpipe_new(pool, 2, 0, 120000, lg);
    CHECK(b.pipe != NULL);
    struct pool_conn *held;
    CHECK(pool_acquire(pool, &held) == ST_OK);

    for (int i = 0; i < JOBS; i++)
        set_job(&b.jobs[i], &st_double, i, &b.completed);
    pthread_barrier_init(&b.start, NULL, SUBMITTERS);
    pthread_t th[SUBMITTERS];
    struct submit_arg args[SUBMITTERS];
    for (int s = 0; s < SUBMITTERS; s++) {
        args[s] = (struct submit_arg){&b, s * PER_SUBMITTER, PER_SUBMITTER};
        pthread_create(&th[s], NULL, submit_range, &args[s]);
    }
    for (int s = 0; s < SUBMITTERS; s++)
        pthread_join(th[s], NULL);
    CHECK(atomic_load(&b.refused) == 0);
    CHECK(atomic_load(&b.completed) == 0); /* nothing ran without a connection */
    pool_release(pool, held);

    CHECK(wait_count(&b.completed, JOBS));
    int once = 0, right = 0;
    for (int i = 0; i < JOBS; i++) {
        once += atomic_load(&b.jobs[i].runs) == 1;
        right += b.jobs[i].rc == ST_OK && b.jobs[i].got == b.jobs[i].want;
    }
    CHECK(once == JOBS);
    CHECK(right == JOBS);
    struct dbpipe_stats s;
    dbpipe_stats(b.pipe, &s);
    CHECK(s.jobs == JOBS);
    CHECK(s.expired == 0);
    CHECK(s.batches >= (JOBS + POOL_BATCH_MAX - 1) / POOL_BATCH_MAX);
    CHECK(s.batches <= JOBS / 16); /* far fewer round trips than statements */
    dbpipe_free(b.pipe);
    pthread_barrier_destroy(&b.start);
    CHECK(atomic_load(&b.completed) == JOBS); /* free ran nothing twice */
    pool_free(pool);
}

/* ---- a failing statement in a batch of the database threads fails alone ---- */

#define BATCH 60

static void failure_in_a_batch(const char *url, const struct logger *lg)
{
    struct pool *pool = pool_new(url, 1, 60000, 10000, lg);
    struct dbpipe *pipe = dbpipe_new(pool, 2, 0, 120000, lg);
    struct pool_conn *held;
    CHECK(pool_acquire(pool, &held) == ST_OK);
    static struct tjob jobs[BATCH];
    atomic_int completed = 0;
    int accepted = 0;
    for (int i = 0; i < BATCH; i++) {
        bool fail = i % 7 == 3;
        set_job(&jobs[i], fail || i % 2 ? &st_divide : &st_double, fail ? 0 : i + 1, &completed);
        accepted += dbpipe_submit(pipe, &jobs[i].job) == ST_OK;
    }
    CHECK(accepted == BATCH);
    pool_release(pool, held);
    CHECK(wait_count(&completed, BATCH));
    int failed = 0, right = 0, once = 0;
    for (int i = 0; i < BATCH; i++) {
        once += atomic_load(&jobs[i].runs) == 1;
        if (i % 7 == 3)
            failed += jobs[i].rc == ST_EINVALID && strcmp(jobs[i].sqlstate, "22012") == 0;
        else
            right += jobs[i].rc == ST_OK && jobs[i].got == jobs[i].want;
    }
    CHECK(once == BATCH);
    CHECK(failed == (BATCH + 3) / 7);
    CHECK(right == BATCH - (BATCH + 3) / 7);
    struct dbpipe_stats s;
    dbpipe_stats(pipe, &s);
    CHECK(s.jobs == BATCH);
    /* one pipeline for what each of the two threads took first, one for what queued
     * meanwhile: the failing statements shared their round trips with the others */
    CHECK(s.batches <= 3);
    dbpipe_free(pipe);
    pool_free(pool);
}

/* ---- a lane: a failing read of a group, a failing write of a group ---- */

#define READS 8 /* one group of reads (at most 8 share a Sync) */
#define WRITES 6

static void lane_groups(const char *url, const struct logger *lg)
{
    CHECK(query_one(url, "DROP TABLE IF EXISTS unit_dbpipe_rows", NULL) == 0);
    CHECK(query_one(url,
                    "CREATE TABLE unit_dbpipe_rows (k text PRIMARY KEY, "
                    "v int NOT NULL CHECK (v >= 0))",
                    NULL) == 0);
    struct pool *pool = pool_new(url, 4, 60000, 10000, lg);
    struct dbpipe *pipe = dbpipe_new(pool, 1, 1, 120000, lg);
    struct dbpipe_lane *ln = dbpipe_lane_attach(pipe);
    CHECK(ln != NULL);
    CHECK(dbpipe_lane_attach(pipe) == NULL); /* one lane per thread */

    /* both statements prepared first: only prepared reads share a Sync */
    atomic_int completed = 0;
    static struct tjob warm[2];
    set_job(&warm[0], &st_double, 1, &completed);
    set_job(&warm[1], &st_divide, 1, &completed);
    int accepted = 0;
    for (int i = 0; i < 2; i++) {
        warm[i].job.read_only = true;
        accepted += dbpipe_submit(pipe, &warm[i].job) == ST_OK;
    }
    CHECK(accepted == 2);
    CHECK(drive_lane(ln, &completed, 2));
    CHECK(warm[0].rc == ST_OK && warm[0].got == 2);
    CHECK(warm[1].rc == ST_OK && warm[1].got == 1000);

    /* the 4th read fails: the three before it stand, the four after it are aborted with
     * it and run again alone */
    struct dbpipe_stats s0, s;
    dbpipe_stats(pipe, &s0);
    static struct tjob reads[READS];
    completed = 0;
    accepted = 0;
    for (int i = 0; i < READS; i++) {
        set_job(&reads[i], i == 3 || i % 2 ? &st_divide : &st_double, i == 3 ? 0 : i + 1,
                &completed);
        reads[i].job.read_only = true;
        accepted += dbpipe_submit(pipe, &reads[i].job) == ST_OK;
    }
    CHECK(accepted == READS);
    CHECK(atomic_load(&completed) == 0); /* a lane sends at its next flush */
    CHECK(drive_lane(ln, &completed, READS));
    int right = 0, once = 0;
    for (int i = 0; i < READS; i++) {
        once += atomic_load(&reads[i].runs) == 1;
        right += i != 3 && reads[i].rc == ST_OK && reads[i].got == reads[i].want;
    }
    CHECK(once == READS);
    CHECK(right == READS - 1);
    CHECK(reads[3].rc == ST_EINVALID && strcmp(reads[3].sqlstate, "22012") == 0);
    dbpipe_stats(pipe, &s);
    CHECK(s.regrouped - s0.regrouped == READS - 4);
    CHECK(s.jobs - s0.jobs == READS + READS - 4);

    /* writes sharing a transaction: one breaks a CHECK, the group is rolled back, each
     * runs again alone, and every good row is there exactly once */
    static struct tjob writes[WRITES];
    completed = 0;
    dbpipe_stats(pipe, &s0);
    accepted = 0;
    for (int i = 0; i < WRITES; i++) {
        set_job(&writes[i], &st_insert, 0, &completed);
        snprintf(writes[i].p0, sizeof(writes[i].p0), "w%d", WRITES - i); /* not in key order */
        snprintf(writes[i].p1, sizeof(writes[i].p1), "%d", i == 2 ? -1 : 10 * i);
        writes[i].job.params[1] = writes[i].p1;
        writes[i].job.group_st = &st_insert;
        writes[i].job.lock_key = writes[i].p0;
        accepted += dbpipe_submit(pipe, &writes[i].job) == ST_OK;
    }
    CHECK(accepted == WRITES);
    CHECK(drive_lane(ln, &completed, WRITES));
    int ok = 0;
    once = 0;
    for (int i = 0; i < WRITES; i++) {
        once += atomic_load(&writes[i].runs) == 1;
        ok += i != 2 && writes[i].rc == ST_OK;
    }
    CHECK(once == WRITES);
    CHECK(ok == WRITES - 1);
    CHECK(writes[2].rc == ST_EINVALID && strcmp(writes[2].sqlstate, "23514") == 0);
    dbpipe_stats(pipe, &s);
    CHECK(s.regrouped - s0.regrouped == WRITES);
    CHECK(query_one(url, "SELECT count(*) FROM unit_dbpipe_rows", NULL) == WRITES - 1);
    CHECK(query_one(url, "SELECT sum(v) FROM unit_dbpipe_rows", NULL) == 10 * (0 + 1 + 3 + 4 + 5));
    CHECK(query_one(url, "SELECT count(*) FROM unit_dbpipe_rows WHERE k = $1", "w4") == 0);

    /* a group of good writes commits at once, each row once */
    completed = 0;
    dbpipe_stats(pipe, &s0);
    accepted = 0;
    for (int i = 0; i < WRITES; i++) {
        set_job(&writes[i], &st_insert, 0, &completed);
        snprintf(writes[i].p0, sizeof(writes[i].p0), "g%d", i);
        snprintf(writes[i].p1, sizeof(writes[i].p1), "%d", i);
        writes[i].job.params[1] = writes[i].p1;
        writes[i].job.group_st = &st_insert;
        writes[i].job.lock_key = writes[i].p0;
        accepted += dbpipe_submit(pipe, &writes[i].job) == ST_OK;
    }
    CHECK(accepted == WRITES);
    CHECK(drive_lane(ln, &completed, WRITES));
    ok = 0;
    for (int i = 0; i < WRITES; i++)
        ok += atomic_load(&writes[i].runs) == 1 && writes[i].rc == ST_OK;
    CHECK(ok == WRITES);
    dbpipe_stats(pipe, &s);
    CHECK(s.regrouped == s0.regrouped);
    CHECK(s.jobs - s0.jobs == WRITES);
    CHECK(query_one(url, "SELECT count(*) FROM unit_dbpipe_rows WHERE k LIKE 'g%'", NULL) ==
          WRITES);

    CHECK(!dbpipe_lane_busy(ln));
    dbpipe_lane_detach(ln);
    dbpipe_free(pipe);
    pool_free(pool);
    CHECK(query_one(url, "DROP TABLE unit_dbpipe_rows", NULL) == 0);
}

/* ---- the database gone: every job completes, as unavailable ---- */

#define GONE_SUBMITTERS 4
#define GONE_JOBS 200

static void database_gone(const struct logger *lg)
{
    struct pool *pool =
        pool_new("postgresql:///none?host=/nonexistent-steward-dir&port=1", 2, 200, 1000, lg);
    struct dbpipe *pipe = dbpipe_new(pool, 2, 1, 120000, lg);
    static struct burst b;
    b.pipe = pipe;
    for (int i = 0; i < GONE_JOBS; i++)
        set_job(&b.jobs[i], &st_double, i, &b.completed);
    pthread_barrier_init(&b.start, NULL, GONE_SUBMITTERS);
    pthread_t th[GONE_SUBMITTERS];
    struct submit_arg args[GONE_SUBMITTERS];
    int per = GONE_JOBS / GONE_SUBMITTERS;
    for (int s = 0; s < GONE_SUBMITTERS; s++) {
        args[s] = (struct submit_arg){&b, s * per, per};
        pthread_create(&th[s], NULL, submit_range, &args[s]);
    }
    for (int s = 0; s < GONE_SUBMITTERS; s++)
        pthread_join(th[s], NULL);
    pthread_barrier_destroy(&b.start);
    CHECK(wait_count(&b.completed, GONE_JOBS));
    int unavailable = 0;
    for (int i = 0; i < GONE_JOBS; i++)
        unavailable +=
            atomic_load(&b.jobs[i].runs) == 1 && b.jobs[i].rc == ST_EUNAVAIL && b.jobs[i].got == -1;
    CHECK(unavailable == GONE_JOBS);

    /* a lane with no connection to be had refuses its queue */
    struct dbpipe_lane *ln = dbpipe_lane_attach(pipe);
    CHECK(ln != NULL);
    atomic_int completed = 0;
    static struct tjob lane_jobs[10];
    int accepted = 0;
    for (int i = 0; i < 10; i++) {
        set_job(&lane_jobs[i], &st_double, i, &completed);
        accepted += dbpipe_submit(pipe, &lane_jobs[i].job) == ST_OK;
    }
    CHECK(accepted == 10);
    CHECK(drive_lane(ln, &completed, 10));
    int refused = 0;
    for (int i = 0; i < 10; i++)
        refused += atomic_load(&lane_jobs[i].runs) == 1 && lane_jobs[i].rc == ST_EUNAVAIL;
    CHECK(refused == 10);
    dbpipe_lane_detach(ln);
    dbpipe_free(pipe);
    CHECK(atomic_load(&b.completed) == GONE_JOBS);
    pool_free(pool);
}

/* ---- a backend killed under a running statement: its job completes as unavailable,
 * and the next one runs on a fresh connection ---- */

static void backend_killed(const char *url, const struct logger *lg)
{
    struct pool *pool = pool_new(url, 1, 60000, 60000, lg);
    struct dbpipe *pipe = dbpipe_new(pool, 1, 0, 120000, lg);
    atomic_int completed = 0;
    static struct tjob slow, next;
    set_job(&slow, &st_sleep, 0, &completed);
    snprintf(slow.p0, sizeof(slow.p0), "60");
    CHECK(dbpipe_submit(pipe, &slow.job) == ST_OK);
    const char *find = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE query LIKE $1 AND pid <> pg_backend_pid()";
    long killed = 0;
    for (int64_t end = clock_now_ms() + 30000; killed == 0 && clock_now_ms() < end;
         clock_sleep_us(5000))
        killed = query_one(url, find, "%'unit_dbpipe_sleep'");
    CHECK(killed == 1);
    int64_t t0 = clock_now_ms();
    CHECK(wait_count(&completed, 1));
    CHECK(clock_now_ms() - t0 < 30000); /* well before the 60 s sleep would have ended */
    CHECK(atomic_load(&slow.runs) == 1 && slow.rc == ST_EUNAVAIL);

    set_job(&next, &st_double, 21, &completed);
    CHECK(dbpipe_submit(pipe, &next.job) == ST_OK);
    CHECK(wait_count(&completed, 2));
    CHECK(next.rc == ST_OK && next.got == 42);
    dbpipe_free(pipe);
    pool_free(pool);
}

/* ---- dbpipe_free with jobs still queued: each completes once, none hangs ---- */

#define QUEUED 50

static void free_completes_the_queue(const char *url, const struct logger *lg)
{
    struct pool *pool = pool_new(url, 1, 300, 10000, lg);
    struct dbpipe *pipe = dbpipe_new(pool, 2, 0, 120000, lg);
    struct pool_conn *held;
    CHECK(pool_acquire(pool, &held) == ST_OK); /* the threads can get no connection */
    atomic_int completed = 0;
    static struct tjob jobs[QUEUED];
    int accepted = 0;
    for (int i = 0; i < QUEUED; i++) {
        set_job(&jobs[i], &st_double, i, &completed);
        accepted += dbpipe_submit(pipe, &jobs[i].job) == ST_OK;
    }
    CHECK(accepted == QUEUED);
    int64_t t0 = clock_now_ms();
    dbpipe_free(pipe);
    CHECK(clock_now_ms() - t0 < 30000);
    int unavailable = 0;
    for (int i = 0; i < QUEUED; i++)
        unavailable += atomic_load(&jobs[i].runs) == 1 && jobs[i].rc == ST_EUNAVAIL;
    CHECK(unavailable == QUEUED);
    CHECK(atomic_load(&completed) == QUEUED);
    pool_release(pool, held);
    pool_free(pool);
}

int main(void)
{
    const char *url = unit_database_url();
    struct logger lg = {LOG_WARN, stderr};
    concurrent_submits(url, &lg);
    failure_in_a_batch(url, &lg);
    lane_groups(url, &lg);
    database_gone(&lg);
    backend_killed(url, &lg);
    free_completes_the_queue(url, &lg);
    return unit_done();
}
