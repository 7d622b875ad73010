#include "steward/clock.h"

#include <errno.h>

static int64_t read_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t clock_now_us(void)
{
    return read_us(CLOCK_MONOTONIC);
}

int64_t clock_now_ms(void)
{
    return read_us(CLOCK_MONOTONIC) / 1000;
}

int64_t clock_wall_us(void)
{
    return read_us(CLOCK_REALTIME);
}

void clock_sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
    while (us > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

struct deadline deadline_in_us(int64_t us)
{
    return (struct deadline){clock_now_us() + (us > 0 ? us : 0)};
}

struct deadline deadline_in_ms(int64_t ms)
{
    return deadline_in_us(ms > 0 ? ms * 1000 : 0);
}

int64_t deadline_left_ms(struct deadline d)
{
    int64_t left = d.at_us - clock_now_us();
    return left > 0 ? (left + 999) / 1000 : 0;
}

bool deadline_passed(struct deadline d)
{
    return clock_now_us() >= d.at_us;
}

struct timespec deadline_timespec(struct deadline d)
{
    int64_t at = d.at_us > 0 ? d.at_us : 0;
    return (struct timespec){.tv_sec = (time_t)(at / 1000000),
                             .tv_nsec = (long)(at % 1000000) * 1000L};
}

int clock_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    return rc;
}

int clock_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, struct deadline d)
{
    struct timespec ts = deadline_timespec(d);
    return pthread_cond_timedwait(cv, mu, &ts);
}
