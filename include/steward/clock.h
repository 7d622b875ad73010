/* The process's clocks and deadlines, in one place.
 *
 * Durations, timeouts and periods use the monotonic clock (clock_now_us/ms): it never
 * jumps when the wall clock is set. Only timestamps that leave the process (logs,
 * reports, rows) use the wall clock (clock_wall_us). A condition variable that waits
 * for a deadline must be made with clock_cond_init, so that its timed wait measures the
 * monotonic clock too. */
#ifndef STEWARD_CLOCK_H
#define STEWARD_CLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* Monotonic time (CLOCK_MONOTONIC), from an arbitrary origin. */
int64_t clock_now_us(void);
int64_t clock_now_ms(void);
/* Wall-clock time (CLOCK_REALTIME) in microseconds since the epoch. */
int64_t clock_wall_us(void);
/* Sleeps at least us microseconds (resuming after signals). */
void clock_sleep_us(int64_t us);

/* A point in monotonic time by which something should be done. */
struct deadline {
    int64_t at_us; /* clock_now_us() scale */
};

/* The deadline ms milliseconds from now (ms <= 0: now). */
struct deadline deadline_in_ms(int64_t ms);
/* The deadline us microseconds from now (us <= 0: now). */
struct deadline deadline_in_us(int64_t us);
/* Milliseconds left, rounded up so that a wait of that long does not end before the
 * deadline; 0 once it has passed. */
int64_t deadline_left_ms(struct deadline d);
/* True once the deadline has passed (left is 0). */
bool deadline_passed(struct deadline d);
/* The deadline as an absolute CLOCK_MONOTONIC time, for pthread_cond_timedwait on a
 * condition variable made with clock_cond_init. */
struct timespec deadline_timespec(struct deadline d);

/* Initialises cv to measure timed waits on CLOCK_MONOTONIC. Returns 0 or an errno. */
int clock_cond_init(pthread_cond_t *cv);
/* pthread_cond_timedwait(cv, mu) until d; returns 0 (woken, maybe spuriously) or
 * ETIMEDOUT. cv must come from clock_cond_init and mu be held. */
int clock_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, struct deadline d);

#endif
