/* Planner (docs/api.md): stagnation evaluation, guarded action plans, outcomes and the
 * retry policy, over the tables of migrations/0003_planner.sql.
 *
 * The pure rules live in src/planner/planner_int.h; this module adds storage, the per-request
 * config row, claims (a plan that records its action as running in the same
 * transaction, with the post serialised by a transaction-scoped advisory lock) and
 * the sweeps the healer calls. Every function returns ST_* (include/steward/err.h);
 * json outputs are new references owned by the caller, set only on ST_OK. */
#ifndef STEWARD_PLANNER_H
#define STEWARD_PLANNER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The three corrective actions, in tier order (tier_1 comment .. tier_3 thread). */
enum planner_action { PLANNER_COMMENT = 0, PLANNER_EDIT = 1, PLANNER_THREAD = 2 };
#define PLANNER_NACTIONS 3

/* "sheal_" + 32 hex digits + NUL */
#define PLANNER_KEY_LEN 39

/* One metric sample of a post: cumulative counters at a time. */
struct planner_point {
    int64_t ts_us; /* microseconds since the epoch */
    long long impressions;
    long long engagements;
};


struct planner;
struct pool;
struct logger;
struct lessons;
struct router;

/* Longest accepted post id, in characters (it is also bounded by the router). */
#define PLANNER_POST_ID_MAX 256
/* Points per metrics request and per inline plan evaluation. */
#define PLANNER_MAX_POINTS 1000

/* The shared config row. */
struct planner_config {
    long long window_minutes;             /* per_post_window_minutes */
    long long min_samples;                /* min_samples_required */
    long long cooldown_s[PLANNER_NACTIONS]; /* cooldown_by_action_seconds, by action */
    long long max_actions;                /* max_actions_per_window */
    long long max_attempts;               /* max_attempts */
};

/* Creates the planner. pool and lg are borrowed and must outlive it; lessons may be
 * NULL (then no lesson is recorded). Returns NULL when out of memory. */
struct planner *planner_new(struct pool *pool, const struct logger *lg, struct lessons *lessons);
/* Frees the planner (NULL is fine). */
void planner_free(struct planner *p);

/* Registers the planner routes. Does not dereference p (the route listing passes NULL).
 * Returns 0, or -1 when the route table is full. */
int planner_http_register(struct router *r, struct planner *p);

/* Upserts n (1..PLANNER_MAX_POINTS, already validated) points of post_id on
 * (post_id, timestamp); a timestamp given twice keeps its last values. *stored is the
 * number of distinct timestamps written. */
int planner_metrics_store(struct planner *p, const char *post_id, const struct planner_point *pts,
                          size_t n, long long *stored);

/* A plan request. */
struct planner_plan_req {
    bool has_now;
    int64_t now_us;                     /* evaluation time when has_now, else the database clock */
    bool has_metrics;                   /* evaluate metrics[] instead of the stored points */
    const struct planner_point *metrics; /* borrowed */
    size_t nmetrics;
    bool claim;                         /* record an eligible plan as a running action */
};
/* Plans one post: the documented checks in order (samples, duplicate, frequency,
 * cooldown). *out is the plan result object; with claim and an eligible result the
 * action row is inserted (or a failed one reset) as running, attempts unchanged
 * (0 for a new key), initiated_at = the database clock, in the same transaction, and
 * "claimed": true is added. */
int planner_plan(struct planner *p, const char *post_id, const struct planner_plan_req *req,
                 json_t **out);

/* An outcome report (PUT /v1/actions/{key}); strings and outcome are borrowed. */
struct planner_outcome {
    const char *post_id;
    enum planner_action action; /* tier follows from it */
    const char *status;         /* running, success or failed */
    json_t *outcome;            /* object or NULL */
    const char *error_code;     /* or NULL */
};
/* Upserts the action: an existing key gets status, outcome and error_code replaced,
 * attempts + 1 and initiated_at = now; a new key is inserted with attempts 1.
 * ST_EINVALID when key is not the idempotency key of (post_id, action). When the report
 * makes a transient failure reach max_attempts, one transient_retry lesson is recorded
 * after commit (never failing the call). *out is the action record with should_retry,
 * retry_after_seconds and retry_at. */
int planner_record_outcome(struct planner *p, const char *key, const struct planner_outcome *o,
                           json_t **out);
/* The action record of key with the retry fields; falls back to the archive (then
 * "archived": true). ST_ENOTFOUND when neither has it. */
int planner_action_get(struct planner *p, const char *key, json_t **out);
/* One page of a post's actions, newest initiated_at first; with needs_recovery only the
 * ones the sweep marked (success without an outcome). cursor is NULL or a next_cursor
 * from an earlier page (ST_EINVALID when malformed). *out is {"items", "next_cursor"}. */
int planner_actions_list(struct planner *p, const char *post_id, bool needs_recovery, int limit,
                         const char *cursor, json_t **out);

/* The config object (with updated_at and updated_by). */
int planner_config_get(struct planner *p, json_t **out);
/* Replaces the config (already validated) and writes a planner_config_updated audit
 * event naming actor (the admin key's name) in the same transaction. *out as above. */
int planner_config_put(struct planner *p, const struct planner_config *c, const char *actor,
                       json_t **out);

/* Healer sweeps; each runs in its own transaction and records lessons after commit. */

/* Running actions initiated more than stuck_after_s ago become failed with error_code
 * "timeout" and attempts + 1 (the sweep reports the outcome the worker never sent).
 * One stuck_recovered lesson per action (work_item_id = key, stage = action type), and
 * a transient_retry lesson when that exhausts the retry budget. *count = actions reset. */
int planner_recover_stuck(struct planner *p, int stuck_after_s, long long *count);
/* Moves failed actions whose initiated_at is more than archive_after_days old to
 * actions_archive. *count = actions moved. */
int planner_archive_failed(struct planner *p, int archive_after_days, long long *count);
/* Marks actions in status success without an outcome for recovery (needs_recovery,
 * cleared by the key's next outcome report). *total = such actions now, *marked = the
 * ones this call marked. */
int planner_mark_missing_outcomes(struct planner *p, long long *total, long long *marked);
/* Counts actions in status success and failed whose initiated_at >= since_us. */
int planner_action_stats(struct planner *p, int64_t since_us, long long *succeeded,
                         long long *failed);

#endif
