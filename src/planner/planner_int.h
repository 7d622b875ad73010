/* The planner's pure rules (docs/api.md): window filter, stagnation score, tiers,
 * idempotency keys, the retry decision and its backoff. No I/O and no database, so
 * every rule is unit-testable on its own; src/planner/planner.c feeds it rows. */
#ifndef STEWARD_PLANNER_INT_H
#define STEWARD_PLANNER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/planner.h"

/* Backoff: base delay, doubled per attempt, capped. */
#define PLANNER_BACKOFF_BASE_S 30
#define PLANNER_BACKOFF_CAP_S 3600

/* The result of evaluating one post's samples. */
struct planner_eval {
    size_t sample_count;     /* points inside the window */
    bool sufficient;         /* sample_count >= min_samples; the fields below only then */
    long long imp_delta;     /* max(0, last.impressions - first.impressions) */
    long long eng_delta;     /* max(0, last.engagements - first.engagements) */
    double eng_rate;         /* eng_delta / imp_delta, 0 when imp_delta is 0 */
    double stagnation_score; /* 1 - min(1, eng_rate * 20) */
    enum planner_action action;
};

/* Picks the window's points (ts_us >= now_us - window_us; no upper bound, as in the
 * baseline) and, among them, first and last by time. Ties keep input order: first is
 * the earliest-given of the oldest points, last the latest-given of the newest, as a
 * stable sort would. Returns the number of points in the window; first and last are
 * written only when it is not 0. */
size_t planner_eval_window(const struct planner_point *pts, size_t n, int64_t now_us,
                           int64_t window_us, struct planner_point *first,
                           struct planner_point *last);

/* Scores a window already reduced to its count and first/last points (the stored
 * path lets SQL pick them through the index). first/last are ignored when count is
 * below min_samples. */
void planner_eval_extremes(size_t count, const struct planner_point *first,
                           const struct planner_point *last, long long min_samples,
                           struct planner_eval *out);

/* planner_eval_window + planner_eval_extremes over a window of window_minutes. */
void planner_evaluate(const struct planner_point *pts, size_t n, int64_t now_us,
                      long long window_minutes, long long min_samples, struct planner_eval *out);

/* 1 - min(1, eng_rate * 20) with eng_rate = eng_delta / imp_delta (0 when imp_delta is 0). */
double planner_stagnation_score(long long imp_delta, long long eng_delta);
/* Score >= 0.8 thread (tier_3), >= 0.55 edit (tier_2), else comment (tier_1). */
enum planner_action planner_action_for_score(double score);

/* "comment", "edit", "thread" and "tier_1", "tier_2", "tier_3". Never NULL. */
const char *planner_action_name(enum planner_action a);
const char *planner_tier_name(enum planner_action a);
/* Parse the names above; return 0, or -1 for anything else. */
int planner_action_parse(const char *s, enum planner_action *out);
int planner_tier_parse(const char *s, enum planner_action *out);

/* "sheal_" + the first 32 hex digits of sha256("<post_id>:<action_type>:<tier>"),
 * written into out[PLANNER_KEY_LEN]. Returns 0, or -1 (out empty) only when OpenSSL
 * cannot allocate while hashing an id longer than 1000 bytes. */
int planner_idempotency_key(const char *post_id, enum planner_action a, char *out);

/* True for the four transient error codes: timeout, rate_limit, service_unavailable,
 * network_error. NULL is not transient. */
bool planner_is_transient(const char *error_code);
/* The retry decision: status "failed", a transient error_code and attempts below
 * max_attempts. */
bool planner_should_retry(const char *status, const char *error_code, long long attempts,
                          long long max_attempts);
/* Backoff in seconds before attempt attempts + 1, counted from the failed attempt:
 * ceiling = min(3600, 30 * 2^(attempts - 1)) (attempts below 1 count as 1), and the
 * delay is ceiling/2 + J mod (ceiling - ceiling/2 + 1), where J is the first eight
 * bytes (big-endian) of sha256("<key>:<attempts>"). So the delay lies in
 * [ceiling/2, ceiling], differs between keys (spreading retries), and is stable for one
 * key and attempt (every instance and every read answer the same). */
long long planner_backoff_seconds(const char *key, long long attempts);

#endif
