/* The audit trail: who (an API key's name) did which admin write to what, and when
 * (docs/api.md, "Audit trail").
 *
 * A floor like the lessons journal: any capability may record into it. A write records
 * inside its own transaction (audit_record_tx on the transaction's connection), so the
 * row exists exactly when the write committed. A user id appears in a row only as its
 * target "user:<id>" (never in detail), so erasure finds every row about a user through
 * one index and replaces the id by its pseudonym (audit_erase_user_tx). detail holds
 * identifiers and settings, never user content. */
#ifndef STEWARD_AUDIT_H
#define STEWARD_AUDIT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "steward/log.h"
#include "steward/pool.h"

struct router;
struct audit;

#define AUDIT_ACTOR_MAX 200  /* characters of an actor */
#define AUDIT_TARGET_MAX 300 /* characters of a target ("user:" + a 200-character id) */
#define AUDIT_ACTION_MAX 64  /* bytes of an action: [a-z][a-z0-9_.]* */

/* Records one row on c (inside the caller's transaction when it has one). actor NULL or
 * "" = "unknown"; detail is borrowed, NULL = {}. Returns ST_*. */
int audit_record_tx(struct pool_conn *c, const char *actor, const char *action,
                    const char *target, const json_t *detail);
/* The same in a statement of its own, for a write that has no transaction of its own
 * (POST /v1/heal). Returns ST_*. */
int audit_record(struct pool *pool, const char *actor, const char *action, const char *target,
                 const json_t *detail);
/* Replaces target "user:<user_id>" by "user:<pseudonym>" in every row; *count gets the
 * number of rows changed. Runs on c inside the erasure's transaction. */
int audit_erase_user_tx(struct pool_conn *c, const char *user_id, const char *pseudonym,
                        long long *count);

/* True for an action name: 1..64 of [a-z0-9_.], starting with a letter. */
bool audit_action_valid(const char *s);

/* The listing (GET /v1/audit). */
struct audit *audit_new(struct pool *pool, const struct logger *lg);
void audit_free(struct audit *a);

/* Filters; NULL / has_since false = none. Combined with AND. */
struct audit_filter {
    const char *actor;
    const char *action;
    const char *target;
    bool has_since;
    int64_t since_us; /* at >= since */
};
/* Rows newest first (by descending id) with id < before_id (0 = from the newest), at
 * most limit. ST_OK with *items a new array and *next_before the id to continue from
 * (0 on the last page), or a database failure. */
int audit_list(struct audit *a, const struct audit_filter *f, int limit, long long before_id,
               json_t **items, long long *next_before);

/* Registers GET /v1/audit (admin). Does not dereference a. 0 or -1. */
int audit_http_register(struct router *r, struct audit *a);

#endif
