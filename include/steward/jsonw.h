/* Writing JSON text by hand, for the places that build it without jansson (log lines,
 * the bonds ledger's responses). One escaping rule for all of them: '"' and '\' get a
 * backslash, newline, carriage return and tab their short escapes, every other byte
 * below 0x20 and DEL (0x7F) a \u00XX escape; everything else, UTF-8 included, is copied
 * as it is. */
#ifndef STEWARD_JSONW_H
#define STEWARD_JSONW_H

#include <stddef.h>

#include "steward/buf.h"

/* Appends s to out as a quoted JSON string. */
void jsonw_str(struct buf *out, const char *s);

/* Appends the len bytes at s (NUL bytes allowed, written \u0000) as a quoted JSON string. */
void jsonw_strn(struct buf *out, const char *s, size_t len);

/* Appends s as JSON string content (no quotes) to the fixed buffer buf, which holds len
 * bytes so far: escapes are written whole or not at all, and what does not fit before
 * cap - 1 is dropped. buf is NUL-terminated; returns the new length. */
size_t jsonw_escape(char *buf, size_t len, size_t cap, const char *s);

/* Appends v as the shortest number text that reads back as v. v must be finite. */
void jsonw_num(struct buf *out, double v);

#endif
