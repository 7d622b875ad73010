/* Lessons: a machine-readable journal of deviations (docs/api.md).
 *
 * The journal is an observer. With the kill switch off (enabled = false) every
 * function here but erasure's (lessons_erase_user_tx) is a no-op that touches no
 * table. Recording goes through the
 * lessons_record() SQL function of migration 0002, one round trip that deduplicates
 * auto records under a transaction-scoped advisory lock on their key. All functions
 * are thread-safe: state is read-only after lessons_new and the database is reached
 * through the shared pool. */
#ifndef STEWARD_LESSONS_H
#define STEWARD_LESSONS_H

#include <jansson.h>
#include <stdbool.h>

#include "steward/log.h"
#include "steward/metrics.h"
#include "steward/pool.h"
struct router;
struct sched;

struct lessons;

/* Defaults of the retry queue of lessons_record_auto (lessons_configure). */
#define LESSONS_QUEUE_MAX_DEFAULT 1000
#define LESSONS_RECORD_WAIT_MS_DEFAULT 5

/* Length limits (characters) of the free-text fields. */
#define LESSONS_ID_MAX 200    /* work_item_id, task_id, stage, agent, repo, related_task,
                                 target_repo */
#define LESSONS_TEXT_MAX 4000 /* root_cause, suggestion */
#define LESSONS_DETAIL_MAX 65536 /* bytes of detail serialised as compact JSON */

/* A lesson to record. Strings are borrowed, NULL = absent. detail is borrowed, NULL
 * = {} (must be an object when set). status NULL = "new", source NULL = "auto" (deduplicated, as the
 * earlier journal did; "manual" is never deduplicated). */
struct lesson_input {
    const char *lesson_type;
    const char *work_item_id;
    const char *task_id;
    const char *stage;
    const char *agent;
    const char *repo;
    const char *root_cause;
    const char *suggestion;
    const char *status;
    const char *related_task;
    const char *attribution;
    const char *target_repo;
    const char *target_domain;
    const char *source;
    json_t *detail;
};

/* What recording did: written (id set) or deduplicated (duplicate_of set). */
struct lesson_outcome {
    bool recorded;
    long long id;
    long long duplicate_of;
};

/* Filters of a list; NULL = no filter. Combined with AND. */
struct lesson_filter {
    const char *lesson_type;
    const char *status;
    const char *repo;
    const char *work_item_id;
};

/* Creates the journal. pool, lg and m are borrowed and must outlive it (m may be NULL).
 * dedup_window_s 0 disables dedup. Returns NULL when out of memory. */
struct lessons *lessons_new(struct pool *pool, const struct logger *lg, struct metrics *m,
                            bool enabled, int dedup_window_s);
/* Frees the journal (NULL is fine). */
void lessons_free(struct lessons *l);

/* True when the kill switch lets the journal work (false for NULL). */
bool lessons_enabled(const struct lessons *l);

/* Records a lesson on steward's own behalf (source "auto"), deduplicated within the
 * configured window. Never-raise and never-wait: with the kill switch off or invalid
 * input it logs a warning and returns false. Otherwise it waits at most record_wait_ms
 * for a pooled connection and record_wait_ms for the statement (statement_timeout); a
 * lesson that cannot be written now (pool busy, table or dedup key locked, database
 * away) is copied to a bounded in-memory queue that a background job retries, oldest
 * first (lessons_start), and so is every lesson recorded while the queue is not empty.
 * A full queue drops the lesson, counts it (MC_LESSONS_DROPPED) and logs a warning at
 * most once a second. A permanent database failure (table missing, privileges) logs a
 * warning and drops it. l may be NULL (then it does nothing). detail is borrowed and may
 * be NULL. Returns true when a row was written by this call. */
bool lessons_record_auto(struct lessons *l, const char *lesson_type, const char *work_item_id,
                         const char *stage, json_t *detail);

/* Sets the retry queue's bound (lessons) and the caller's wait (ms) of
 * lessons_record_auto; before any recording. Values below 1 count as 1. */
void lessons_configure(struct lessons *l, int queue_max, int record_wait_ms);
/* Adds the job retrying queued lessons (every 250 ms, on the work queue) to sc, which
 * must be stopped before lessons_free. Returns 0 or -1. */
int lessons_start(struct lessons *l, struct sched *sc);
/* Writes queued lessons for at most budget_ms (at shutdown, after the job stopped);
 * logs a warning with the count of those left unwritten. Returns the rows written. */
int lessons_flush(struct lessons *l, int budget_ms);
/* Lessons waiting in the retry queue. */
int lessons_queued(struct lessons *l);

/* The snapshot {"enabled", "total", "by_type", "by_status", "last_24h",
 * "newest_at"} read in one statement, so the counts agree with each other. With the
 * kill switch off *out is {"enabled": false} and no table is read. Returns ST_OK with
 * *out a new reference, or ST_EUNAVAIL / ST_EINTERNAL / ST_ENOMEM (*out NULL). */
int lessons_snapshot(struct lessons *l, json_t **out);

/* Checks a POST body against the input rules and fills in (strings borrowed from body).
 * Appends one {"field","message"} per problem to errs (unknown fields included).
 * Pure: touches no database. Returns true when valid. */
bool lessons_parse_new(const json_t *body, struct lesson_input *in, json_t *errs);

/* Checks a PATCH body: only status, attribution, target_repo, target_domain,
 * related_task, root_cause and suggestion may appear (null clears all but status).
 * Appends problems to errs. On success *changes is a new object holding exactly the
 * requested changes. Pure. Returns true when valid. */
bool lessons_parse_patch(const json_t *body, json_t **changes, json_t *errs);

/* Checks list filters (slugs for lesson_type and status, identifiers for repo and
 * work_item_id); field names are the query parameter names. Pure. */
bool lessons_check_filter(const struct lesson_filter *f, json_t *errs);

/* Records a validated lesson (REST). ST_OK with *out filled, ST_EDISABLED when
 * switched off (nothing touched), ST_EUNAVAIL, ST_EINVALID or ST_EINTERNAL. */
int lessons_record(struct lessons *l, const struct lesson_input *in, struct lesson_outcome *out);

/* Reads one lesson: ST_OK with *out a new object, ST_ENOTFOUND, ST_EDISABLED, or a
 * database failure. */
int lessons_get(struct lessons *l, long long id, json_t **out);

/* Lists lessons newest first (by descending id) with id < before_id (0 = from the
 * newest), at most limit. ST_OK with *items a new array and *next_before the id to pass
 * as before_id for the next page (0 when this was the last page); ST_EDISABLED (no
 * table touched) or a database failure. */
int lessons_list(struct lessons *l, const struct lesson_filter *f, int limit, long long before_id,
                 json_t **items, long long *next_before);

/* Applies changes (from lessons_parse_patch, borrowed) to lesson id and stamps
 * updated_at, with an audit row "lesson.update" by actor in the same transaction. ST_OK with *out the updated lesson (new reference), ST_ENOTFOUND,
 * ST_EDISABLED or a database failure. */
int lessons_update(struct lessons *l, long long id, const json_t *changes, const char *actor,
                   json_t **out);

/* Erasure's share of the journal (src/users), inside its transaction on c: every
 * lesson steward recorded about user_id (detail.user_id, e.g. delivery_failed) gets
 * pseudonym in that field instead; adds {"lessons_pseudonymised"} to counts. Runs with
 * the kill switch off too (erasure must be complete), then tolerating a missing table.
 * Lessons written through the API with free text are the caller's to erase. */
int lessons_erase_user_tx(struct lessons *l, struct pool_conn *c, const char *user_id,
                          const char *pseudonym, json_t *counts);
/* Registers the lessons routes. Does not dereference l (it may be NULL when only the
 * route table is listed). Returns 0 or -1 when the route table is full. */
int lessons_http_register(struct router *r, struct lessons *l);

#endif
