/* Pure helpers of the scouts module's delivery pass (docs/protocol.md): how the in-flight
 * windows of a user's sessions travel to the fetch-and-mark statement and how its
 * answer names the sessions a proposal goes to. No I/O; unit-tested. */
#ifndef STEWARD_SCOUTS_PASS_H
#define STEWARD_SCOUTS_PASS_H

#include <stddef.h>

#define SCOUTS_ID_LEN 36 /* a canonical uuid */

/* The ids one session has in flight (borrowed). */
struct scouts_window {
    const char (*ids)[SCOUTS_ID_LEN + 1];
    int n;
};

/* The in-flight ids of n sessions as a JSON array with one array of id strings per
 * session, in order (malloc'd), or NULL when out of memory. Ids are canonical uuids as
 * the database wrote them (nothing to escape); at most SCOUTS_ID_LEN characters of each
 * are used. */
char *scouts_windows_json(const struct scouts_window *w, size_t n);

/* Parses a comma-separated list of 1-based session numbers, each in 1..nsess, into
 * 0-based indexes (*out malloc'd, NULL for an empty or NULL list). Returns 0, -1 when
 * malformed or out of range, -2 when out of memory; *out is NULL on failure. */
int scouts_parse_sessions(const char *list, size_t nsess, int **out, size_t *n);

#endif
