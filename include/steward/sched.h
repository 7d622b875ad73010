/* One scheduler for the periodic jobs of the process (the healer's sweep and report,
 * the scouts' ack-timeout sweep and presence refresh, the API-key cache refresh), in
 * place of a timer thread each.
 *
 * One thread keeps a small table of jobs, each with its own period, and sleeps until
 * the next one is due. A due job is submitted to the work queue (or, when marked
 * inline, run on the scheduler thread itself). A job never overlaps itself: its next
 * run is due one period (plus its jitter) after its previous run finished, as with a
 * thread that sleeps between runs. Different jobs may run at the same time. */
#ifndef STEWARD_SCHED_H
#define STEWARD_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "steward/workq.h"

/* Jobs one scheduler holds. */
#define SCHED_MAX_JOBS 16

typedef void (*sched_fn)(void *ctx);

struct sched_job {
    const char *name; /* a static string naming the job */
    sched_fn fn;
    void *ctx;         /* borrowed; must outlive sched_stop */
    int64_t period_ms; /* > 0: from the end of one run to the start of the next */
    int64_t first_ms;  /* the first run comes this long after sched_add; 0: one period */
    int64_t jitter_ms; /* every wait is lengthened by a random 0..jitter_ms (0: exact) */
    /* Runs on the scheduler thread instead of the work queue. Only for jobs that take
     * microseconds and never block (no I/O, no wait for another thread's lock holder):
     * while one runs, no other job is dispatched. */
    bool inline_run;
    /* Runs on the wall clock's grid instead: at the times t with (t - offset_ms) a
     * multiple of period_ms since the epoch (every 15 min at offset 5 min: :05, :20, :35,
     * :50), the first one the next grid time after sched_add (first_ms is ignored), the
     * next one the next grid time after the previous run ended. Instances of a deployment
     * so run the job at the same moments. offset_ms is taken modulo period_ms. */
    bool wall_aligned;
    int64_t offset_ms;
};

/* Microseconds from now_wall_us (epoch microseconds) to the next time after it on the grid
 * of period_ms at offset_ms (as wall_aligned jobs use); in (0, period_ms * 1000]. */
int64_t sched_grid_delay_us(int64_t now_wall_us, int64_t period_ms, int64_t offset_ms);

struct sched;

/* A scheduler whose jobs run on q (borrowed; must outlive sched_stop; may be NULL when
 * every job is inline). Nothing runs until sched_start. Returns NULL when out of memory. */
struct sched *sched_new(struct workq *q);
/* Adds a job (copied), before or after sched_start. Returns 0, or -1 when the table is
 * full, the job is invalid (no fn, period <= 0, negative delays, not inline without a
 * queue) or the scheduler is stopping. */
int sched_add(struct sched *s, const struct sched_job *job);
/* Starts the scheduler thread. Returns 0, or -1 when it could not start. Calling it
 * twice is harmless. */
int sched_start(struct sched *s);
/* Stops dispatching, then waits for the runs in progress to finish (a run still queued
 * on the work queue is skipped when its turn comes). The work queue must keep running
 * until this returns. Idempotent; safe without sched_start; NULL is a no-op. */
void sched_stop(struct sched *s);
/* Frees the scheduler, stopping it first. NULL is a no-op. */
void sched_free(struct sched *s);

#endif
