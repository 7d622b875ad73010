/* The bond ledger's private parts: pure helpers (no database) that bonds.c, its HTTP
 * adapter and its unit test share. */
#ifndef STEWARD_BONDS_INT_H
#define STEWARD_BONDS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/bonds.h"
#include "steward/buf.h"

/* True when an If-Match list names etag (strong comparison) or is "*". */
bool bonds_etag_matches(const char *list, const char *etag);

/* value rounded to 4 decimals half to even on its exact binary value, i.e. the number
 * printf("%.4f") prints. */
double bonds_round4(double value);

/* True when s is valid UTF-8 of 1..max_chars characters without control characters
 * (the rule for user ids and label filters). */
bool bonds_valid_id(const char *s, size_t max_chars);

/* Appends the stored form of a note, "[YYYY-MM-DD HH:MM] <note>" in UTC, to out. */
void bonds_note_format(struct buf *out, int64_t at_us, const char *note);

/* Appends the detail strings of the ledger's events to out. */
void bonds_detail_phase(struct buf *out, const char *from, const char *to);
void bonds_detail_risk(struct buf *out, const char *from, const char *to);
void bonds_detail_cap(struct buf *out, long long old_cap, long long new_cap);
void bonds_detail_note(struct buf *out, const char *note);

/* The rate-limit rule (docs/api.md) on a stored state: cap 0 answers allowed with remaining
 * -1 and the stored count; otherwise a count of 0 means no window runs yet (the first
 * consume starts one: reset_in_s is a whole window), more than 86400 s since reset_at
 * counts as 0, and
 * remaining = max(0, cap - count), allowed = remaining > 0. reset_in_s is set too. */
void bonds_rate_eval(long long cap, long long count, int64_t reset_at_us, int64_t now_us,
                     struct bonds_rate *out);

#endif
