/* Planner logic and SQL (docs/api.md). No transport here: src/planner/planner_http.c adapts
 * requests to these calls. */
#include "steward/planner.h"

#include "planner_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/buf.h"
#include "steward/cursor.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/audit.h"
#include "steward/lessons.h"
#include "steward/log.h"
#include "steward/pool.h"
#include "steward/sql.h"

struct planner {
    struct pool *pool;
    const struct logger *lg;
    struct lessons *lessons;
};

/* The documented defaults, used only if the seeded row has been removed by hand. */
static const struct planner_config config_defaults = {
    .window_minutes = 90,
    .min_samples = 3,
    .cooldown_s = {1800, 7200, 10800},
    .max_actions = 2,
    .max_attempts = 5,
};

/* 0001-01-01T00:00:00Z, the oldest time RFC 3339 input can name. */
#define PLANNER_EPOCH_MIN_US (-62135596800LL * 1000000)

/* Advisory lock class for "plans of one post" (two-int form: its own key space). */
#define PLANNER_LOCK_CLASS "1347568210"

#define ACTION_COLS                                                                           \
    "idempotency_key, post_id, action_type, tier, status, attempts, " SQL_US("initiated_at")  \
    ", outcome::text, error_code, id"
enum { AC_KEY, AC_POST, AC_TYPE, AC_TIER, AC_STATUS, AC_ATTEMPTS, AC_INITIATED, AC_OUTCOME,
       AC_ERROR, AC_ID, AC_NCOLS };

#define CONFIG_COLS                                                                           \
    "c.per_post_window_minutes, c.min_samples_required, c.cooldown_comment_seconds, "         \
    "c.cooldown_edit_seconds, c.cooldown_thread_seconds, c.max_actions_per_window, "          \
    "c.max_attempts, " SQL_US("c.updated_at") ", c.updated_by"
enum { CC_WINDOW, CC_SAMPLES, CC_COMMENT, CC_EDIT, CC_THREAD, CC_MAX_ACTIONS, CC_MAX_ATTEMPTS,
       CC_UPDATED_AT, CC_UPDATED_BY, CC_NCOLS };

static const struct db_stmt st_lock_post = {
    "planner_lock_post",
    "SELECT pg_advisory_xact_lock(" PLANNER_LOCK_CLASS ", hashtext($1))", 1};

/* The config row and the evaluation time (the given one, else the database clock read
 * after any lock was taken). Always one row, config columns NULL if the row is gone. */
static const struct db_stmt st_config_now = {
    "planner_config_now",
    "SELECT " CONFIG_COLS ", " SQL_US("n.t") " FROM "
    "(SELECT coalesce($1::timestamptz, clock_timestamp()) AS t) n "
    "LEFT JOIN planner_config c ON c.id",
    1};

static const struct db_stmt st_config_get = {
    "planner_config_get", "SELECT " CONFIG_COLS " FROM planner_config c WHERE c.id", 0};

static const struct db_stmt st_config_put = {
    "planner_config_put",
    "INSERT INTO planner_config AS c (id, per_post_window_minutes, min_samples_required, "
    "cooldown_comment_seconds, cooldown_edit_seconds, cooldown_thread_seconds, "
    "max_actions_per_window, max_attempts, updated_at, updated_by) "
    "VALUES (true, $1, $2, $3, $4, $5, $6, $7, now(), $8) "
    "ON CONFLICT (id) DO UPDATE SET per_post_window_minutes = EXCLUDED.per_post_window_minutes, "
    "min_samples_required = EXCLUDED.min_samples_required, "
    "cooldown_comment_seconds = EXCLUDED.cooldown_comment_seconds, "
    "cooldown_edit_seconds = EXCLUDED.cooldown_edit_seconds, "
    "cooldown_thread_seconds = EXCLUDED.cooldown_thread_seconds, "
    "max_actions_per_window = EXCLUDED.max_actions_per_window, "
    "max_attempts = EXCLUDED.max_attempts, updated_at = now(), updated_by = EXCLUDED.updated_by "
    "RETURNING " CONFIG_COLS,
    8};

/* Count and first/last point of a post's window, through the (post_id, timestamp) key. */
static const struct db_stmt st_window = {
    "planner_window",
    "SELECT w.n, f.us, f.impressions, f.engagements, l.us, l.impressions, l.engagements "
    "FROM (SELECT count(*) AS n FROM post_metrics "
    "      WHERE post_id = $1 AND \"timestamp\" >= $2::timestamptz) w "
    "LEFT JOIN LATERAL (SELECT " SQL_US("\"timestamp\"") " AS us, impressions, engagements "
    "      FROM post_metrics WHERE post_id = $1 AND \"timestamp\" >= $2::timestamptz "
    "      ORDER BY \"timestamp\" ASC LIMIT 1) f ON true "
    "LEFT JOIN LATERAL (SELECT " SQL_US("\"timestamp\"") " AS us, impressions, engagements "
    "      FROM post_metrics WHERE post_id = $1 AND \"timestamp\" >= $2::timestamptz "
    "      ORDER BY \"timestamp\" DESC LIMIT 1) l ON true",
    2};

/* Duplicate, frequency (counted only up to the cap) and cooldown inputs in one trip. */
static const struct db_stmt st_checks = {
    "planner_checks",
    "SELECT EXISTS (SELECT 1 FROM actions WHERE idempotency_key = $1 "
    "               AND status IN ('success', 'running')), "
    "(SELECT count(*) FROM (SELECT 1 FROM actions WHERE post_id = $2 "
    "       AND initiated_at >= $3::timestamptz LIMIT $5::int) capped), "
    "(SELECT " SQL_US("initiated_at") " FROM actions WHERE post_id = $2 AND action_type = $4 "
    "       ORDER BY initiated_at DESC LIMIT 1)",
    5};

/* Claim: a new key becomes a running action; a failed one is reset to running. A key
 * that is running or succeeded is left alone (no row returned). initiated_at is the
 * database clock even when the plan was evaluated at a pinned "now": the row records
 * when the work really started (the stuck sweep relies on it). */
static const struct db_stmt st_claim = {
    "planner_claim",
    "INSERT INTO actions AS a (idempotency_key, post_id, action_type, tier, status, attempts, "
    "initiated_at) VALUES ($1, $2, $3, $4, 'running', 0, clock_timestamp()) "
    "ON CONFLICT (idempotency_key) DO UPDATE SET status = 'running', outcome = NULL, "
    "error_code = NULL, initiated_at = EXCLUDED.initiated_at, updated_at = now() "
    "WHERE a.status = 'failed' RETURNING a.id",
    4};

static const struct db_stmt st_outcome = {
    "planner_outcome",
    "INSERT INTO actions AS a (idempotency_key, post_id, action_type, tier, status, attempts, "
    "initiated_at, outcome, error_code) VALUES ($1, $2, $3, $4, $5, 1, now(), $6::jsonb, $7) "
    "ON CONFLICT (idempotency_key) DO UPDATE SET status = EXCLUDED.status, "
    "outcome = EXCLUDED.outcome, error_code = EXCLUDED.error_code, attempts = a.attempts + 1, "
    "initiated_at = now(), updated_at = now() RETURNING " ACTION_COLS,
    7};

static const struct db_stmt st_max_attempts = {
    "planner_max_attempts", "SELECT max_attempts FROM planner_config WHERE id", 0};

static const struct db_stmt st_action_get = {
    "planner_action_get",
    "SELECT * FROM ("
    "  (SELECT " ACTION_COLS ", false AS archived FROM actions WHERE idempotency_key = $1) "
    "  UNION ALL "
    "  (SELECT " ACTION_COLS ", true FROM actions_archive WHERE idempotency_key = $1 "
    "   ORDER BY archive_id DESC LIMIT 1)) x ORDER BY archived LIMIT 1",
    1};

static const struct db_stmt st_list_first = {
    "planner_list_first",
    "SELECT " ACTION_COLS " FROM actions WHERE post_id = $1 "
    "ORDER BY initiated_at DESC, id DESC LIMIT $2::int",
    2};

static const struct db_stmt st_list_after = {
    "planner_list_after",
    "SELECT " ACTION_COLS " FROM actions WHERE post_id = $1 "
    "AND (initiated_at, id) < ($3::timestamptz, $4::int8) "
    "ORDER BY initiated_at DESC, id DESC LIMIT $2::int",
    4};

static const struct db_stmt st_metrics_upsert = {
    "planner_metrics_upsert",
    "INSERT INTO post_metrics (post_id, \"timestamp\", impressions, engagements) "
    "SELECT DISTINCT ON (u.t) $1, u.t, u.i, u.e "
    "FROM unnest($2::timestamptz[], $3::int8[], $4::int8[]) WITH ORDINALITY AS u(t, i, e, o) "
    "ORDER BY u.t, u.o DESC "
    "ON CONFLICT (post_id, \"timestamp\") DO UPDATE SET impressions = EXCLUDED.impressions, "
    "engagements = EXCLUDED.engagements, received_at = now()",
    4};

static const struct db_stmt st_recover = {
    "planner_recover",
    "UPDATE actions SET status = 'failed', error_code = 'timeout', attempts = attempts + 1, "
    "updated_at = now() WHERE status = 'running' "
    "AND initiated_at < now() - make_interval(secs => $1::int) "
    "RETURNING idempotency_key, post_id, action_type, tier, attempts, " SQL_US("initiated_at"),
    1};

static const struct db_stmt st_archive = {
    "planner_archive",
    "WITH moved AS (DELETE FROM actions WHERE status = 'failed' "
    "  AND initiated_at < now() - make_interval(days => $1::int) RETURNING *) "
    "INSERT INTO actions_archive (id, idempotency_key, post_id, action_type, tier, status, "
    "attempts, initiated_at, outcome, error_code, created_at, updated_at) "
    "SELECT id, idempotency_key, post_id, action_type, tier, status, attempts, initiated_at, "
    "outcome, error_code, created_at, updated_at FROM moved",
    1};

static const struct db_stmt st_stats = {
    "planner_stats",
    "SELECT (SELECT count(*) FROM actions WHERE status = 'success' "
    "        AND initiated_at >= $1::timestamptz), "
    "       (SELECT count(*) FROM actions WHERE status = 'failed' "
    "        AND initiated_at >= $1::timestamptz)",
    1};

struct planner *planner_new(struct pool *pool, const struct logger *lg, struct lessons *lessons)
{
    struct planner *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->pool = pool;
    p->lg = lg;
    p->lessons = lessons;
    return p;
}

void planner_free(struct planner *p)
{
    free(p);
}

/* ---- rows to values ---------------------------------------------------------------- */

static void config_from_row(const PGresult *r, int row, struct planner_config *c)
{
    if (sql_isnull(r, row, CC_WINDOW)) {
        *c = config_defaults;
        return;
    }
    c->window_minutes = sql_ll(r, row, CC_WINDOW);
    c->min_samples = sql_ll(r, row, CC_SAMPLES);
    c->cooldown_s[PLANNER_COMMENT] = sql_ll(r, row, CC_COMMENT);
    c->cooldown_s[PLANNER_EDIT] = sql_ll(r, row, CC_EDIT);
    c->cooldown_s[PLANNER_THREAD] = sql_ll(r, row, CC_THREAD);
    c->max_actions = sql_ll(r, row, CC_MAX_ACTIONS);
    c->max_attempts = sql_ll(r, row, CC_MAX_ATTEMPTS);
}

static json_t *config_json(const PGresult *r, int row)
{
    struct planner_config c;
    config_from_row(r, row, &c);
    return json_pack("{s:I, s:I, s:{s:I, s:I, s:I}, s:I, s:I, s:o, s:o}",
                     "per_post_window_minutes", (json_int_t)c.window_minutes,
                     "min_samples_required", (json_int_t)c.min_samples,
                     "cooldown_by_action_seconds",
                     "comment", (json_int_t)c.cooldown_s[PLANNER_COMMENT],
                     "edit", (json_int_t)c.cooldown_s[PLANNER_EDIT],
                     "thread", (json_int_t)c.cooldown_s[PLANNER_THREAD],
                     "max_actions_per_window", (json_int_t)c.max_actions,
                     "max_attempts", (json_int_t)c.max_attempts,
                     "updated_at", sql_json_time(r, row, CC_UPDATED_AT),
                     "updated_by", sql_json_str(r, row, CC_UPDATED_BY));
}

static json_t *action_json(const PGresult *r, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:I, s:o, s:o, s:o}",
                     "idempotency_key", sql_json_str(r, row, AC_KEY),
                     "post_id", sql_json_str(r, row, AC_POST),
                     "action_type", sql_json_str(r, row, AC_TYPE),
                     "tier", sql_json_str(r, row, AC_TIER),
                     "status", sql_json_str(r, row, AC_STATUS),
                     "attempts", (json_int_t)sql_ll(r, row, AC_ATTEMPTS),
                     "initiated_at", sql_json_time(r, row, AC_INITIATED),
                     "outcome", sql_json_parse(r, row, AC_OUTCOME),
                     "error_code", sql_json_str(r, row, AC_ERROR));
}

/* The action record plus the retry policy's answer for it. */
static json_t *action_retry_json(const PGresult *r, int row, long long max_attempts)
{
    json_t *o = action_json(r, row);
    if (!o)
        return NULL;
    const char *key = sql_str(r, row, AC_KEY);
    long long attempts = sql_ll(r, row, AC_ATTEMPTS);
    bool retry = planner_should_retry(sql_str(r, row, AC_STATUS), sql_str(r, row, AC_ERROR),
                                      attempts, max_attempts);
    json_object_set_new(o, "should_retry", json_boolean(retry));
    if (retry) {
        long long delay = planner_backoff_seconds(key, attempts);
        json_object_set_new(o, "retry_after_seconds", json_integer((json_int_t)delay));
        json_object_set_new(o, "retry_at",
                            jtime_json(sql_ll(r, row, AC_INITIATED) + delay * 1000000));
    } else {
        json_object_set_new(o, "retry_after_seconds", json_null());
        json_object_set_new(o, "retry_at", json_null());
    }
    return o;
}

static json_t *ineligible(const char *reason)
{
    return json_pack("{s:b, s:s}", "eligible", 0, "reason", reason);
}

/* ---- plan -------------------------------------------------------------------------- */

struct plan_ctx {
    struct planner *p;
    const char *post_id;
    const struct planner_plan_req *req;
    json_t *out;
};

static int plan_fn(struct pool_conn *c, void *arg)
{
    struct plan_ctx *x = arg;
    const struct planner_plan_req *req = x->req;
    json_decref(x->out);
    x->out = NULL;
    PGresult *r = NULL;
    int rc;
    char nowbuf[32], frombuf[32], capbuf[24];

    if (req->claim) {
        const char *lp[] = {x->post_id};
        r = pool_exec(c, &st_lock_post, lp);
        rc = pool_result_err(c, r);
        PQclear(r);
        if (rc != ST_OK)
            return rc;
    }

    const char *cp[] = {req->has_now ? sql_fmt_time(nowbuf, req->now_us) : NULL};
    r = pool_exec(c, &st_config_now, cp);
    rc = pool_result_err(c, r);
    if (rc != ST_OK || PQntuples(r) != 1) {
        PQclear(r);
        return rc != ST_OK ? rc : ST_EINTERNAL;
    }
    struct planner_config cfg;
    config_from_row(r, 0, &cfg);
    if (sql_isnull(r, 0, CC_WINDOW))
        log_msg(x->p->lg, LOG_WARN, "planner_config row missing; using the defaults", NULL);
    int64_t now_us = sql_ll(r, 0, CC_NCOLS);
    PQclear(r);
    int64_t window_us = (int64_t)cfg.window_minutes * 60 * 1000000;
    /* a window reaching before 0001-01-01 starts there (timestamps cannot be older) */
    int64_t from_us = now_us - window_us < PLANNER_EPOCH_MIN_US ? PLANNER_EPOCH_MIN_US
                                                                 : now_us - window_us;
    sql_fmt_time(frombuf, from_us);

    struct planner_eval ev;
    if (req->has_metrics) {
        planner_evaluate(req->metrics, req->nmetrics, now_us, cfg.window_minutes, cfg.min_samples,
                         &ev);
    } else {
        const char *wp[] = {x->post_id, frombuf};
        r = pool_exec(c, &st_window, wp);
        rc = pool_result_err(c, r);
        if (rc != ST_OK || PQntuples(r) != 1) {
            PQclear(r);
            return rc != ST_OK ? rc : ST_EINTERNAL;
        }
        struct planner_point first = {sql_ll(r, 0, 1), sql_ll(r, 0, 2), sql_ll(r, 0, 3)};
        struct planner_point last = {sql_ll(r, 0, 4), sql_ll(r, 0, 5), sql_ll(r, 0, 6)};
        planner_eval_extremes((size_t)sql_ll(r, 0, 0), &first, &last, cfg.min_samples, &ev);
        PQclear(r);
    }
    if (!ev.sufficient) {
        x->out = json_pack("{s:b, s:s, s:I}", "eligible", 0, "reason", "insufficient_samples",
                           "sample_count", (json_int_t)ev.sample_count);
        return x->out ? ST_OK : ST_ENOMEM;
    }

    char key[PLANNER_KEY_LEN];
    if (planner_idempotency_key(x->post_id, ev.action, key) != 0)
        return ST_ENOMEM;
    const char *action_type = planner_action_name(ev.action);
    const char *chk[] = {key, x->post_id, frombuf, action_type, sql_fmt_ll(capbuf, cfg.max_actions)};
    r = pool_exec(c, &st_checks, chk);
    rc = pool_result_err(c, r);
    if (rc != ST_OK || PQntuples(r) != 1) {
        PQclear(r);
        return rc != ST_OK ? rc : ST_EINTERNAL;
    }
    bool duplicate = sql_bool(r, 0, 0);
    long long in_window = sql_ll(r, 0, 1);
    bool has_last = !sql_isnull(r, 0, 2);
    int64_t last_us = sql_ll(r, 0, 2);
    PQclear(r);

    if (duplicate) {
        x->out = json_pack("{s:b, s:s, s:s}", "eligible", 0, "reason", "duplicate_action",
                           "idempotency_key", key);
    } else if (in_window >= cfg.max_actions) {
        x->out = ineligible("window_frequency_exceeded");
    } else if (has_last && now_us - last_us < (int64_t)cfg.cooldown_s[ev.action] * 1000000) {
        x->out = ineligible("action_cooldown_active");
    } else {
        x->out = json_pack("{s:s, s:b, s:f, s:s, s:s, s:s}", "post_id", x->post_id, "eligible", 1,
                           "stagnation_score", ev.stagnation_score, "tier",
                           planner_tier_name(ev.action), "action_type", action_type,
                           "idempotency_key", key);
        if (x->out && req->claim) {
            const char *clp[] = {key, x->post_id, action_type, planner_tier_name(ev.action)};
            r = pool_exec(c, &st_claim, clp);
            rc = pool_result_err(c, r);
            int claimed = PQntuples(r);
            PQclear(r);
            if (rc != ST_OK)
                return rc;
            if (claimed == 1) {
                json_object_set_new(x->out, "claimed", json_true());
            } else {
                /* an outcome report raced in and made the key running or successful */
                json_decref(x->out);
                x->out = json_pack("{s:b, s:s, s:s}", "eligible", 0, "reason",
                                   "duplicate_action", "idempotency_key", key);
            }
        }
    }
    return x->out ? ST_OK : ST_ENOMEM;
}

int planner_plan(struct planner *p, const char *post_id, const struct planner_plan_req *req,
                 json_t **out)
{
    struct plan_ctx x = {.p = p, .post_id = post_id, .req = req};
    int rc = pool_tx(p->pool, plan_fn, &x);
    if (rc != ST_OK) {
        json_decref(x.out);
        return rc;
    }
    *out = x.out;
    return ST_OK;
}

/* ---- metrics ----------------------------------------------------------------------- */

struct metrics_ctx {
    const char *params[4];
    long long stored;
};

static int metrics_fn(struct pool_conn *c, void *arg)
{
    struct metrics_ctx *x = arg;
    PGresult *r = pool_exec(c, &st_metrics_upsert, x->params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        x->stored = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return rc;
}

int planner_metrics_store(struct planner *p, const char *post_id, const struct planner_point *pts,
                          size_t n, long long *stored)
{
    struct buf ts = {0}, imp = {0}, eng = {0};
    buf_append(&ts, "{", 1);
    buf_append(&imp, "{", 1);
    buf_append(&eng, "{", 1);
    for (size_t i = 0; i < n; i++) {
        char t[32];
        jtime_format(pts[i].ts_us, t);
        const char *sep = i ? "," : "";
        buf_printf(&ts, "%s\"%s\"", sep, t);
        buf_printf(&imp, "%s%lld", sep, pts[i].impressions);
        buf_printf(&eng, "%s%lld", sep, pts[i].engagements);
    }
    buf_append(&ts, "}", 1);
    buf_append(&imp, "}", 1);
    buf_append(&eng, "}", 1);
    int rc = ST_ENOMEM;
    if (!ts.oom && !imp.oom && !eng.oom) {
        struct metrics_ctx x = {{post_id, ts.data, imp.data, eng.data}, 0};
        rc = pool_with(p->pool, metrics_fn, &x);
        if (rc == ST_OK)
            *stored = x.stored;
    }
    buf_release(&ts);
    buf_release(&imp);
    buf_release(&eng);
    return rc;
}

/* ---- outcomes ---------------------------------------------------------------------- */

struct outcome_ctx {
    const char *params[7];
    json_t *out;
    /* for the lesson after commit */
    bool exhausted;
    long long attempts, max_attempts;
};

static int read_max_attempts(struct pool_conn *c, long long *out)
{
    PGresult *r = pool_exec(c, &st_max_attempts, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        *out = PQntuples(r) == 1 ? sql_ll(r, 0, 0) : config_defaults.max_attempts;
    PQclear(r);
    return rc;
}

static int outcome_fn(struct pool_conn *c, void *arg)
{
    struct outcome_ctx *x = arg;
    json_decref(x->out);
    x->out = NULL;
    x->exhausted = false;
    int rc = read_max_attempts(c, &x->max_attempts);
    if (rc != ST_OK)
        return rc;
    PGresult *r = pool_exec(c, &st_outcome, x->params);
    rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_EINTERNAL;
    if (rc == ST_OK) {
        x->attempts = sql_ll(r, 0, AC_ATTEMPTS);
        /* attempts grew by one: this report is the one crossing the budget */
        x->exhausted = strcmp(sql_str(r, 0, AC_STATUS), "failed") == 0 &&
                       planner_is_transient(sql_str(r, 0, AC_ERROR)) &&
                       x->attempts >= x->max_attempts && x->attempts - 1 < x->max_attempts;
        x->out = action_retry_json(r, 0, x->max_attempts);
        if (!x->out)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    return rc;
}

static void record_lesson(struct planner *p, const char *type, const char *key,
                          const char *action_type, json_t *detail)
{
    /* never-raise: a journal failure is logged by the lessons module and ignored here */
    if (p->lessons)
        lessons_record_auto(p->lessons, type, key, action_type, detail);
    json_decref(detail);
}

int planner_record_outcome(struct planner *p, const char *key, const struct planner_outcome *o,
                           json_t **out)
{
    char expect[PLANNER_KEY_LEN];
    if (planner_idempotency_key(o->post_id, o->action, expect) != 0)
        return ST_ENOMEM;
    if (strcmp(expect, key) != 0)
        return ST_EINVALID;
    char *outcome_text = NULL;
    if (o->outcome) {
        outcome_text = json_dumps(o->outcome, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!outcome_text)
            return ST_ENOMEM;
    }
    const char *action_type = planner_action_name(o->action);
    struct outcome_ctx x = {.params = {key, o->post_id, action_type, planner_tier_name(o->action),
                                       o->status, outcome_text, o->error_code}};
    int rc = pool_tx(p->pool, outcome_fn, &x);
    free(outcome_text);
    if (rc != ST_OK) {
        json_decref(x.out);
        return rc;
    }
    if (x.exhausted) {
        log_msg(p->lg, LOG_INFO, "retry budget exhausted", "idempotency_key", key,
                "error_code", o->error_code, NULL);
        record_lesson(p, "transient_retry", key, action_type,
                      json_pack("{s:s, s:s, s:s, s:I, s:I}", "post_id", o->post_id, "tier",
                                planner_tier_name(o->action), "error_code", o->error_code,
                                "attempts", (json_int_t)x.attempts, "max_attempts",
                                (json_int_t)x.max_attempts));
    }
    *out = x.out;
    return ST_OK;
}

/* ---- reads ------------------------------------------------------------------------- */

struct get_ctx {
    const char *key;
    json_t *out;
};

static int get_fn(struct pool_conn *c, void *arg)
{
    struct get_ctx *x = arg;
    json_decref(x->out);
    x->out = NULL;
    long long max_attempts;
    int rc = read_max_attempts(c, &max_attempts);
    if (rc != ST_OK)
        return rc;
    const char *params[] = {x->key};
    PGresult *r = pool_exec(c, &st_action_get, params);
    rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 0)
        rc = ST_ENOTFOUND;
    if (rc == ST_OK) {
        x->out = action_retry_json(r, 0, max_attempts);
        if (!x->out)
            rc = ST_ENOMEM;
        else if (sql_bool(r, 0, AC_NCOLS))
            json_object_set_new(x->out, "archived", json_true());
    }
    PQclear(r);
    return rc;
}

int planner_action_get(struct planner *p, const char *key, json_t **out)
{
    struct get_ctx x = {.key = key};
    int rc = pool_with(p->pool, get_fn, &x);
    if (rc != ST_OK) {
        json_decref(x.out);
        return rc;
    }
    *out = x.out;
    return ST_OK;
}

struct list_ctx {
    const char *post_id;
    int limit;
    bool after;
    int64_t cur_us, cur_id;
    json_t *out;
};

static int list_fn(struct pool_conn *c, void *arg)
{
    struct list_ctx *x = arg;
    json_decref(x->out);
    x->out = NULL;
    char lim[24], t[32], id[24];
    const char *params[] = {x->post_id, sql_fmt_ll(lim, x->limit + 1),
                            sql_fmt_time(t, x->cur_us), sql_fmt_ll(id, x->cur_id)};
    PGresult *r = pool_exec(c, x->after ? &st_list_after : &st_list_first, params);
    int rc = pool_result_err(c, r);
    if (rc != ST_OK) {
        PQclear(r);
        return rc;
    }
    int n = PQntuples(r);
    json_t *items = json_array();
    for (int i = 0; i < n && i < x->limit; i++)
        json_array_append_new(items, action_json(r, i));
    json_t *next = json_null();
    if (n > x->limit) {
        char cur[CURSOR_LEN];
        cursor_encode(cur, sql_ll(r, x->limit - 1, AC_INITIATED), sql_ll(r, x->limit - 1, AC_ID));
        json_decref(next);
        next = json_string(cur);
    }
    PQclear(r);
    x->out = json_pack("{s:o, s:o}", "items", items, "next_cursor", next);
    return x->out ? ST_OK : ST_ENOMEM;
}

int planner_actions_list(struct planner *p, const char *post_id, int limit, const char *cursor,
                         json_t **out)
{
    struct list_ctx x = {.post_id = post_id, .limit = limit};
    if (cursor) {
        if (cursor_decode(cursor, &x.cur_us, &x.cur_id) != 0)
            return ST_EINVALID;
        x.after = true;
    }
    int rc = pool_with(p->pool, list_fn, &x);
    if (rc != ST_OK) {
        json_decref(x.out);
        return rc;
    }
    *out = x.out;
    return ST_OK;
}

/* ---- config ------------------------------------------------------------------------ */

struct config_ctx {
    const struct planner_config *in; /* NULL: read */
    const char *actor;
    json_t *out;
};

static int config_get_fn(struct pool_conn *c, void *arg)
{
    struct config_ctx *x = arg;
    json_decref(x->out);
    x->out = NULL;
    PGresult *r = pool_exec(c, &st_config_get, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        if (PQntuples(r) == 1) {
            x->out = config_json(r, 0);
        } else {
            /* the seeded row was deleted by hand: show what plans use */
            const struct planner_config *d = &config_defaults;
            x->out = json_pack("{s:I, s:I, s:{s:I, s:I, s:I}, s:I, s:I, s:n, s:n}",
                               "per_post_window_minutes", (json_int_t)d->window_minutes,
                               "min_samples_required", (json_int_t)d->min_samples,
                               "cooldown_by_action_seconds", "comment",
                               (json_int_t)d->cooldown_s[0], "edit", (json_int_t)d->cooldown_s[1],
                               "thread", (json_int_t)d->cooldown_s[2], "max_actions_per_window",
                               (json_int_t)d->max_actions, "max_attempts",
                               (json_int_t)d->max_attempts, "updated_at", "updated_by");
        }
        if (!x->out)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    return rc;
}

int planner_config_get(struct planner *p, json_t **out)
{
    struct config_ctx x = {0};
    int rc = pool_with(p->pool, config_get_fn, &x);
    if (rc != ST_OK) {
        json_decref(x.out);
        return rc;
    }
    *out = x.out;
    return ST_OK;
}

static int config_put_fn(struct pool_conn *c, void *arg)
{
    struct config_ctx *x = arg;
    const struct planner_config *in = x->in;
    json_decref(x->out);
    x->out = NULL;
    char b[7][24];
    const char *params[] = {sql_fmt_ll(b[0], in->window_minutes),
                            sql_fmt_ll(b[1], in->min_samples),
                            sql_fmt_ll(b[2], in->cooldown_s[PLANNER_COMMENT]),
                            sql_fmt_ll(b[3], in->cooldown_s[PLANNER_EDIT]),
                            sql_fmt_ll(b[4], in->cooldown_s[PLANNER_THREAD]),
                            sql_fmt_ll(b[5], in->max_actions),
                            sql_fmt_ll(b[6], in->max_attempts),
                            x->actor};
    PGresult *r = pool_exec(c, &st_config_put, params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_EINTERNAL;
    if (rc == ST_OK) {
        x->out = config_json(r, 0);
        if (!x->out)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    if (rc != ST_OK)
        return rc;
    json_t *d = json_pack("{s:O}", "config", x->out);
    if (!d)
        return ST_ENOMEM;
    rc = audit_record_tx(c, x->actor, "planner.config.set", "planner:config", d);
    json_decref(d);
    return rc;
}

int planner_config_put(struct planner *p, const struct planner_config *cfg, const char *actor,
                       json_t **out)
{
    struct config_ctx x = {.in = cfg, .actor = actor};
    int rc = pool_tx(p->pool, config_put_fn, &x);
    if (rc != ST_OK) {
        json_decref(x.out);
        return rc;
    }
    log_msg(p->lg, LOG_INFO, "planner config updated", "key_name", actor ? actor : "", NULL);
    *out = x.out;
    return ST_OK;
}

/* ---- healer sweeps ----------------------------------------------------------------- */

struct recover_ctx {
    int stuck_after_s;
    PGresult *rows; /* the recovered actions, kept for the lessons after commit */
    long long max_attempts;
};

static int recover_fn(struct pool_conn *c, void *arg)
{
    struct recover_ctx *x = arg;
    PQclear(x->rows);
    x->rows = NULL;
    int rc = read_max_attempts(c, &x->max_attempts);
    if (rc != ST_OK)
        return rc;
    char s[24];
    const char *params[] = {sql_fmt_ll(s, x->stuck_after_s)};
    PGresult *r = pool_exec(c, &st_recover, params);
    rc = pool_result_err(c, r);
    if (rc != ST_OK) {
        PQclear(r);
        return rc;
    }
    x->rows = r;
    return ST_OK;
}

int planner_recover_stuck(struct planner *p, int stuck_after_s, long long *count)
{
    struct recover_ctx x = {.stuck_after_s = stuck_after_s};
    *count = 0;
    int rc = pool_tx(p->pool, recover_fn, &x);
    if (rc != ST_OK) {
        PQclear(x.rows);
        return rc;
    }
    int n = PQntuples(x.rows);
    for (int i = 0; i < n; i++) {
        const char *key = sql_str(x.rows, i, 0);
        const char *post_id = sql_str(x.rows, i, 1);
        const char *action_type = sql_str(x.rows, i, 2);
        const char *tier = sql_str(x.rows, i, 3);
        long long attempts = sql_ll(x.rows, i, 4);
        log_msg(p->lg, LOG_WARN, "stuck action reset to failed", "idempotency_key", key,
                "post_id", post_id, NULL);
        record_lesson(p, "stuck_recovered", key, action_type,
                      json_pack("{s:s, s:s, s:I, s:o, s:i}", "post_id", post_id, "tier", tier,
                                "attempts", (json_int_t)attempts, "initiated_at",
                                jtime_json(sql_ll(x.rows, i, 5)), "stuck_after_s",
                                stuck_after_s));
        if (attempts >= x.max_attempts && attempts - 1 < x.max_attempts)
            record_lesson(p, "transient_retry", key, action_type,
                          json_pack("{s:s, s:s, s:s, s:I, s:I}", "post_id", post_id, "tier",
                                    tier, "error_code", "timeout", "attempts",
                                    (json_int_t)attempts, "max_attempts",
                                    (json_int_t)x.max_attempts));
    }
    PQclear(x.rows);
    *count = n;
    return ST_OK;
}

struct count_ctx {
    const struct db_stmt *st;
    const char *param;
    long long a, b;
};

static int archive_fn(struct pool_conn *c, void *arg)
{
    struct count_ctx *x = arg;
    const char *params[] = {x->param};
    PGresult *r = pool_exec(c, x->st, params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        x->a = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return rc;
}

int planner_archive_failed(struct planner *p, int archive_after_days, long long *count)
{
    char d[24];
    struct count_ctx x = {.st = &st_archive, .param = sql_fmt_ll(d, archive_after_days)};
    *count = 0;
    int rc = pool_tx(p->pool, archive_fn, &x);
    if (rc == ST_OK)
        *count = x.a;
    return rc;
}

static int stats_fn(struct pool_conn *c, void *arg)
{
    struct count_ctx *x = arg;
    const char *params[] = {x->param};
    PGresult *r = pool_exec(c, x->st, params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_EINTERNAL;
    if (rc == ST_OK) {
        x->a = sql_ll(r, 0, 0);
        x->b = sql_ll(r, 0, 1);
    }
    PQclear(r);
    return rc;
}

int planner_action_stats(struct planner *p, int64_t since_us, long long *succeeded,
                         long long *failed)
{
    char t[32];
    struct count_ctx x = {.st = &st_stats, .param = sql_fmt_time(t, since_us)};
    *succeeded = *failed = 0;
    int rc = pool_tx(p->pool, stats_fn, &x);
    if (rc == ST_OK) {
        *succeeded = x.a;
        *failed = x.b;
    }
    return rc;
}
