#include "unit.h"

#include <stdio.h>
#include <stdlib.h>

struct unit_state {
    int run;
    int failed;
};

static struct unit_state state; /* test-runner bookkeeping only */

void unit_check(int ok, const char *expr, const char *file, int line)
{
    state.run++;
    if (!ok)
        state.failed++;
    printf("%s %d - %s (%s:%d)\n", ok ? "ok" : "not ok", state.run, expr, file, line);
    fflush(stdout); /* a sanitizer ending the process must not swallow the lines so far */
}

int unit_done(void)
{
    printf("1..%d\n", state.run);
    return state.failed ? 1 : 0;
}

const char *unit_database_url(void)
{
    const char *url = getenv("STEWARD_TEST_DATABASE_URL");
    if (url && *url)
        return url;
    unit_check(0,
               "STEWARD_TEST_DATABASE_URL names a PostgreSQL database (scripts/test starts one: "
               "tests/harness/pgserve.py)",
               __FILE__, __LINE__);
    exit(unit_done());
}
