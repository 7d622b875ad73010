/* Opaque pagination cursors carrying two integers (typically a time in microseconds
 * and a row id), so a page boundary stays stable while new rows arrive. */
#ifndef STEWARD_CURSOR_H
#define STEWARD_CURSOR_H

#include <stdint.h>

#define CURSOR_LEN 34 /* bytes including the NUL */

void cursor_encode(char *out, int64_t a, int64_t b);
/* Returns 0, or -1 when s is not a cursor this module wrote. */
int cursor_decode(const char *s, int64_t *a, int64_t *b);

#endif
