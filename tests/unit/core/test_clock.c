#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "steward/clock.h"
#include "unit.h"

static void check_now(void)
{
    int64_t a = clock_now_us();
    int64_t ms = clock_now_ms();
    usleep(20000);
    int64_t b = clock_now_us();
    CHECK(b - a >= 20000);
    CHECK(b - a < 5000000);
    CHECK(ms >= a / 1000 && ms <= b / 1000);
    /* the wall clock is the epoch one: within a few seconds of time() */
    int64_t wall = clock_wall_us();
    int64_t t = (int64_t)time(NULL);
    CHECK(wall / 1000000 >= t - 2 && wall / 1000000 <= t + 2);
    int64_t prev = clock_now_us();
    int backwards = 0;
    for (int i = 0; i < 10000; i++) {
        int64_t now = clock_now_us();
        backwards += now < prev;
        prev = now;
    }
    CHECK(backwards == 0);
}

static void check_deadlines(void)
{
    struct deadline d = deadline_in_ms(60);
    CHECK(!deadline_passed(d));
    int64_t left = deadline_left_ms(d);
    CHECK(left > 0 && left <= 60);
    usleep(70000);
    CHECK(deadline_passed(d));
    CHECK(deadline_left_ms(d) == 0);

    /* a deadline in the past, or of no length, has passed */
    CHECK(deadline_passed(deadline_in_ms(-5)));
    CHECK(deadline_left_ms(deadline_in_ms(-5)) == 0);
    CHECK(deadline_passed(deadline_in_ms(0)));

    /* left rounds up: a wait of that long never ends before the deadline */
    int rounded = 0;
    for (int i = 0; i < 50; i++) {
        struct deadline e = {clock_now_us() + 10500};
        int64_t before = e.at_us - clock_now_us();
        int64_t l = deadline_left_ms(e);
        int64_t after = e.at_us - clock_now_us();
        rounded += l * 1000 >= after && l * 1000 < before + 1000;
    }
    CHECK(rounded == 50);

    struct deadline t = {1234567890123};
    struct timespec ts = deadline_timespec(t);
    CHECK(ts.tv_sec == 1234567 && ts.tv_nsec == 890123000L);
    CHECK(deadline_in_us(1000).at_us - clock_now_us() <= 1000);
}

/* The timed wait measures the monotonic clock: it lasts until the deadline, not until
 * a wall-clock time that has long passed. */
static void check_cond(void)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    CHECK(clock_cond_init(&cv) == 0);
    pthread_mutex_lock(&mu);
    int64_t t0 = clock_now_us();
    struct deadline d = deadline_in_ms(40);
    int rc = 0;
    while (rc != ETIMEDOUT)
        rc = clock_cond_wait_until(&cv, &mu, d);
    int64_t took = clock_now_us() - t0;
    pthread_mutex_unlock(&mu);
    CHECK(rc == ETIMEDOUT);
    CHECK(took >= 40000);
    CHECK(took < 2000000);
    CHECK(deadline_passed(d));
    pthread_cond_destroy(&cv);
}

int main(void)
{
    check_now();
    check_deadlines();
    check_cond();
    return unit_done();
}
