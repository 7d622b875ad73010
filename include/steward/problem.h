/* RFC 9457 problem details. */
#ifndef STEWARD_PROBLEM_H
#define STEWARD_PROBLEM_H

#include <jansson.h>

/* Builds {"type": "/problems/<slug>", "title", "status", "detail"}; slug NULL picks
 * the default for status. Returns a new reference (NULL only when out of memory). */
json_t *problem_new(int status, const char *slug, const char *detail);

/* The default slug and title for an HTTP status ("not-found", "Not Found"). */
const char *problem_slug(int status);
const char *problem_title(int status);

#endif
