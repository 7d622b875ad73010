/* A tiny TAP producer for the unit tests: one "ok"/"not ok" line per check. */
#ifndef UNIT_H
#define UNIT_H

#include <string.h>

void unit_check(int ok, const char *expr, const char *file, int line);
/* Prints the plan and returns the process exit status. */
int unit_done(void);
/* The PostgreSQL the database tests run against: STEWARD_TEST_DATABASE_URL, which
 * scripts/test sets (tests/harness/pgserve.py). Without it the test fails at once with a
 * "not ok" line saying so: it never passes without having run. */
const char *unit_database_url(void);

#define CHECK(cond) unit_check(!!(cond), #cond, __FILE__, __LINE__)
#define CHECK_STR(a, b) unit_check(strcmp((a), (b)) == 0, #a " == " #b, __FILE__, __LINE__)

#endif
