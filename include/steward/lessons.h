/* Lessons: a machine-readable journal of deviations (SPEC 3).
 * (The full API is added by the lessons module; this is the part other modules use.) */
#ifndef STEWARD_LESSONS_H
#define STEWARD_LESSONS_H

#include <jansson.h>
#include <stdbool.h>

struct lessons;

/* Records a lesson on steward's own behalf (source "auto"), deduplicated within the
 * configured window. Never-raise: with the kill switch off, a missing table or any
 * database error it logs a warning and returns false; it never fails or blocks the
 * caller for longer than one statement. l may be NULL (then it does nothing). detail
 * is borrowed and may be NULL. Returns true when a row was written. */
bool lessons_record_auto(struct lessons *l, const char *lesson_type, const char *work_item_id,
                         const char *stage, json_t *detail);

#endif
