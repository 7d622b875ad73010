/* Lessons journal: validation, recording with dedup, list, update and snapshot
 * (docs/api.md, "Lessons journal").
 * No transport here; the HTTP adapter is lessons_http.c. */
#include "steward/lessons.h"

#include "steward/audit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/clock.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/sched.h"
#include "steward/sql.h"

/* A lesson of lessons_record_auto waiting to be written (one malloc'd block). */
struct pending {
    struct pending *next;
    char *lesson_type, *work_item_id, *stage, *detail; /* detail: compact JSON or NULL */
};

struct lessons {
    struct pool *pool;
    const struct logger *lg;
    struct metrics *m;
    bool enabled;
    int dedup_window_s;
    int queue_max;      /* lessons the retry queue holds at most */
    int record_wait_ms; /* what a caller may wait for a connection, then for the statement */

    pthread_mutex_t mu; /* the retry queue and its overflow bookkeeping */
    struct pending *head, *tail;
    int queued;
    long long dropped_unlogged; /* overflows since the last overflow log line */
    int64_t overflow_logged_us; /* monotonic time of that line (0: never) */
    pthread_mutex_t drain_mu;   /* one drain at a time (the job, or the flush at shutdown) */
};

/* The columns of a lesson as the row readers below expect them. */
#define LESSON_COLS                                                                         \
    "id, lesson_type, work_item_id, task_id, stage, agent, repo, root_cause, suggestion, " \
    "status, related_task, attribution, target_repo, target_domain, source, detail, "      \
    SQL_US("created_at") ", " SQL_US("updated_at")

/* Text columns 1..14 of LESSON_COLS, in order. */
static const char *const text_cols[] = {
    "lesson_type", "work_item_id", "task_id",      "stage",       "agent",
    "repo",        "root_cause",   "suggestion",   "status",      "related_task",
    "attribution", "target_repo",  "target_domain", "source",
};
#define NTEXT (sizeof(text_cols) / sizeof(text_cols[0]))

static const struct db_stmt st_record = {
    "lessons_record",
    "SELECT lesson_id, duplicate_of FROM lessons_record($1, $2, $3, $4, $5, $6, $7, $8, $9, "
    "$10, $11, $12, $13, $14, $15::json, $16::int4)",
    16};

static const struct db_stmt st_get = {"lessons_get",
                                      "SELECT " LESSON_COLS " FROM lessons WHERE id = $1", 1};

static const struct db_stmt st_update = {
    "lessons_update",
    "UPDATE lessons SET "
    "status = CASE WHEN $2::jsonb ? 'status' THEN $2::jsonb->>'status' ELSE status END, "
    "attribution = CASE WHEN $2::jsonb ? 'attribution' THEN $2::jsonb->>'attribution' "
    "ELSE attribution END, "
    "target_repo = CASE WHEN $2::jsonb ? 'target_repo' THEN $2::jsonb->>'target_repo' "
    "ELSE target_repo END, "
    "target_domain = CASE WHEN $2::jsonb ? 'target_domain' THEN $2::jsonb->>'target_domain' "
    "ELSE target_domain END, "
    "related_task = CASE WHEN $2::jsonb ? 'related_task' THEN $2::jsonb->>'related_task' "
    "ELSE related_task END, "
    "root_cause = CASE WHEN $2::jsonb ? 'root_cause' THEN $2::jsonb->>'root_cause' "
    "ELSE root_cause END, "
    "suggestion = CASE WHEN $2::jsonb ? 'suggestion' THEN $2::jsonb->>'suggestion' "
    "ELSE suggestion END, "
    "updated_at = greatest(clock_timestamp(), updated_at) "
    "WHERE id = $1 RETURNING " LESSON_COLS,
    2};

static const struct db_stmt st_snapshot = {
    "lessons_snapshot",
    "SELECT (SELECT count(*) FROM lessons), "
    "(SELECT coalesce(json_object_agg(lesson_type, n), '{}'::json) FROM "
    "(SELECT lesson_type, count(*) AS n FROM lessons GROUP BY lesson_type) t), "
    "(SELECT coalesce(json_object_agg(status, n), '{}'::json) FROM "
    "(SELECT status, count(*) AS n FROM lessons GROUP BY status) s), "
    "(SELECT count(*) FROM lessons WHERE created_at > now() - interval '24 hours'), "
    "(SELECT " SQL_US("max(created_at)") " FROM lessons)",
    0};

/* Lists: one statement per combination of filters, so each plan (generic or custom)
 * can use the index of its filter. $1 = id bound, $2 = limit, $3..$6 = lesson_type,
 * status, repo, work_item_id (NULL when not filtered; unused ones are only typed). */
#define LF_T " AND lesson_type = $3"
#define LN_T " AND $3::text IS NULL"
#define LF_S " AND status = $4"
#define LN_S " AND $4::text IS NULL"
#define LF_R " AND repo = $5"
#define LN_R " AND $5::text IS NULL"
#define LF_W " AND work_item_id = $6"
#define LN_W " AND $6::text IS NULL"
#define LIST_SQL(t, s, r, w)                                                                  \
    "SELECT " LESSON_COLS " FROM lessons WHERE id < $1::int8" t s r w " ORDER BY id DESC "  \
    "LIMIT $2::int4"
static const struct db_stmt st_list[16] = {
    {"lessons_list_0", LIST_SQL(LN_T, LN_S, LN_R, LN_W), 6},
    {"lessons_list_1", LIST_SQL(LF_T, LN_S, LN_R, LN_W), 6},
    {"lessons_list_2", LIST_SQL(LN_T, LF_S, LN_R, LN_W), 6},
    {"lessons_list_3", LIST_SQL(LF_T, LF_S, LN_R, LN_W), 6},
    {"lessons_list_4", LIST_SQL(LN_T, LN_S, LF_R, LN_W), 6},
    {"lessons_list_5", LIST_SQL(LF_T, LN_S, LF_R, LN_W), 6},
    {"lessons_list_6", LIST_SQL(LN_T, LF_S, LF_R, LN_W), 6},
    {"lessons_list_7", LIST_SQL(LF_T, LF_S, LF_R, LN_W), 6},
    {"lessons_list_8", LIST_SQL(LN_T, LN_S, LN_R, LF_W), 6},
    {"lessons_list_9", LIST_SQL(LF_T, LN_S, LN_R, LF_W), 6},
    {"lessons_list_10", LIST_SQL(LN_T, LF_S, LN_R, LF_W), 6},
    {"lessons_list_11", LIST_SQL(LF_T, LF_S, LN_R, LF_W), 6},
    {"lessons_list_12", LIST_SQL(LN_T, LN_S, LF_R, LF_W), 6},
    {"lessons_list_13", LIST_SQL(LF_T, LN_S, LF_R, LF_W), 6},
    {"lessons_list_14", LIST_SQL(LN_T, LF_S, LF_R, LF_W), 6},
    {"lessons_list_15", LIST_SQL(LF_T, LF_S, LF_R, LF_W), 6},
};

/* The time limits of one record, set and restored around it in the same pipeline (one
 * round trip): lock_timeout bounds its waits for the table and the dedup key's advisory
 * lock (migrations/0010 took the function's own 1 s setting away so that the caller's
 * applies), statement_timeout everything else. The reset restores the connection's
 * defaults: the pool's statement_timeout and the server's lock_timeout. */
static const struct db_stmt st_limits_set = {
    "lessons_limits_set",
    "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)",
    2};
static const struct db_stmt st_limits_reset = {
    "lessons_limits_reset",
    "SELECT set_config('lock_timeout', (SELECT reset_val FROM pg_settings "
    "WHERE name = 'lock_timeout'), false), set_config('statement_timeout', $1, false)",
    1};

/* How long a lock wait of a REST record may take (503 past it), as before 0010. */
#define REST_LOCK_MS 1000
/* A caller's record is also cut short when slow for another reason than a lock (a
 * starved CPU, a cold backend compiling the function): at most this long. */
#define AUTO_BACKSTOP_MS 100

struct lessons *lessons_new(struct pool *pool, const struct logger *lg, struct metrics *m,
                            bool enabled, int dedup_window_s)
{
    struct lessons *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->pool = pool;
    l->lg = lg;
    l->m = m;
    l->enabled = enabled;
    l->dedup_window_s = dedup_window_s < 0 ? 0 : dedup_window_s;
    l->queue_max = LESSONS_QUEUE_MAX_DEFAULT;
    l->record_wait_ms = LESSONS_RECORD_WAIT_MS_DEFAULT;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->drain_mu, NULL);
    return l;
}

void lessons_configure(struct lessons *l, int queue_max, int record_wait_ms)
{
    if (!l)
        return;
    l->queue_max = queue_max < 1 ? 1 : queue_max;
    l->record_wait_ms = record_wait_ms < 1 ? 1 : record_wait_ms;
}

void lessons_free(struct lessons *l)
{
    if (!l)
        return;
    if (l->queued > 0) {
        struct log_line ln;
        log_begin(&ln, l->lg, LOG_WARN, "queued lessons dropped");
        log_int(&ln, "count", l->queued);
        log_end(&ln);
    }
    for (struct pending *p = l->head, *next; p; p = next) {
        next = p->next;
        free(p);
    }
    metrics_gauge_add(l->m, MG_LESSONS_QUEUED, -(int64_t)l->queued);
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->drain_mu);
    free(l);
}

bool lessons_enabled(const struct lessons *l)
{
    return l && l->enabled;
}

/* ---- validation (pure) ---------------------------------------------------------- */

static const char *const id_fields[] = {"work_item_id", "task_id", "stage", "agent",
                                        "repo", "related_task", "target_repo", NULL};
static const char *const slug_fields[] = {"lesson_type", "status", "attribution",
                                          "target_domain", NULL};

static bool in_list(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (strcmp(*list, s) == 0)
            return true;
    return false;
}

/* An identifier: 1..LESSONS_ID_MAX characters, none of them control characters. */
static bool id_ok(const char *s)
{
    return jv_is_printable_id(s, LESSONS_ID_MAX);
}

/* Reads an identifier field; returns like jv_string. */
static int read_id(const json_t *obj, const char *key, const char **out, json_t *errs)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
        !id_ok(json_string_value(v))) {
        jv_error(errs, key, "must be a string of 1 to %d characters without control characters",
                 LESSONS_ID_MAX);
        return -1;
    }
    *out = json_string_value(v);
    return 1;
}

static int read_text(const json_t *obj, const char *key, const char **out, json_t *errs)
{
    return jv_string(obj, key, "", false, 0, LESSONS_TEXT_MAX, out, errs);
}

static int read_detail(const json_t *obj, json_t **out, json_t *errs)
{
    json_t *d = NULL;
    int rc = jv_object(obj, "detail", "", false, &d, errs);
    if (rc != 1)
        return rc;
    char *text = json_text(d, NULL);
    size_t n = text ? strlen(text) : 0;
    free(text);
    if (n > LESSONS_DETAIL_MAX) {
        jv_error(errs, "detail", "must serialise to at most %d bytes of JSON",
                 LESSONS_DETAIL_MAX);
        return -1;
    }
    *out = d;
    return 1;
}

bool lessons_parse_new(const json_t *body, struct lesson_input *in, json_t *errs)
{
    static const char *const allowed[] = {
        "lesson_type", "work_item_id", "task_id",      "stage",       "agent",
        "repo",        "root_cause",   "suggestion",   "status",      "related_task",
        "attribution", "target_repo",  "target_domain", "source",     "detail",
        NULL};
    memset(in, 0, sizeof(*in));
    size_t before = json_array_size(errs);
    if (!json_is_object(body)) {
        jv_error(errs, "body", "must be a JSON object");
        return false;
    }
    jv_unknown_fields(body, allowed, "", errs);
    jv_slug(body, "lesson_type", "", true, &in->lesson_type, errs);
    jv_slug(body, "status", "", false, &in->status, errs);
    jv_slug(body, "attribution", "", false, &in->attribution, errs);
    jv_slug(body, "target_domain", "", false, &in->target_domain, errs);
    read_id(body, "work_item_id", &in->work_item_id, errs);
    read_id(body, "task_id", &in->task_id, errs);
    read_id(body, "stage", &in->stage, errs);
    read_id(body, "agent", &in->agent, errs);
    read_id(body, "repo", &in->repo, errs);
    read_id(body, "related_task", &in->related_task, errs);
    read_id(body, "target_repo", &in->target_repo, errs);
    read_text(body, "root_cause", &in->root_cause, errs);
    read_text(body, "suggestion", &in->suggestion, errs);
    json_t *src = json_object_get(body, "source");
    if (src && !json_is_null(src)) {
        const char *s = json_is_string(src) ? json_string_value(src) : NULL;
        if (s && (strcmp(s, "auto") == 0 || strcmp(s, "manual") == 0))
            in->source = s;
        else
            jv_error(errs, "source", "must be \"auto\" or \"manual\"");
    }
    read_detail(body, &in->detail, errs);
    return json_array_size(errs) == before;
}

bool lessons_parse_patch(const json_t *body, json_t **changes, json_t *errs)
{
    static const char *const changeable[] = {"status",       "attribution", "target_repo",
                                             "target_domain", "related_task", "root_cause",
                                             "suggestion",   NULL};
    static const char *const fixed[] = {"id",     "lesson_type", "work_item_id", "task_id",
                                         "stage",  "agent",       "repo",         "source",
                                         "detail", "created_at",  "updated_at",   NULL};
    *changes = NULL;
    size_t before = json_array_size(errs);
    if (!json_is_object(body)) {
        jv_error(errs, "body", "must be a JSON object");
        return false;
    }
    json_t *out = json_object();
    if (!out)
        return false;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v) {
        if (in_list(fixed, key)) {
            jv_error(errs, key, "may not be changed");
            continue;
        }
        if (!in_list(changeable, key)) {
            jv_error(errs, key, "unknown field");
            continue;
        }
        if (json_is_null(v)) {
            if (strcmp(key, "status") == 0)
                jv_error(errs, key, "must not be null");
            else
                json_object_set_new(out, key, json_null());
            continue;
        }
        const char *s = NULL;
        int rc;
        if (in_list(slug_fields, key))
            rc = jv_slug(body, key, "", false, &s, errs);
        else if (in_list(id_fields, key))
            rc = read_id(body, key, &s, errs);
        else
            rc = read_text(body, key, &s, errs);
        if (rc == 1)
            json_object_set_new(out, key, json_string(s));
    }
    if (json_array_size(errs) == before && json_object_size(out) == 0)
        jv_error(errs, "body",
                 "must change at least one of status, attribution, target_repo, "
                 "target_domain, related_task, root_cause, suggestion");
    if (json_array_size(errs) != before) {
        json_decref(out);
        return false;
    }
    *changes = out;
    return true;
}

bool lessons_check_filter(const struct lesson_filter *f, json_t *errs)
{
    size_t before = json_array_size(errs);
    if (f->lesson_type && !jv_is_slug(f->lesson_type))
        jv_error(errs, "lesson_type", "must match ^[a-z0-9_]{1,64}$");
    if (f->status && !jv_is_slug(f->status))
        jv_error(errs, "status", "must match ^[a-z0-9_]{1,64}$");
    if (f->repo && !id_ok(f->repo))
        jv_error(errs, "repo", "must be 1 to %d characters without control characters",
                 LESSONS_ID_MAX);
    if (f->work_item_id && !id_ok(f->work_item_id))
        jv_error(errs, "work_item_id", "must be 1 to %d characters without control characters",
                 LESSONS_ID_MAX);
    return json_array_size(errs) == before;
}

/* ---- database ------------------------------------------------------------------- */

static json_t *row_json(const PGresult *r, int row)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "id", json_integer(sql_ll(r, row, 0)));
    for (size_t i = 0; i < NTEXT; i++)
        json_object_set_new(o, text_cols[i], sql_json_str(r, row, (int)i + 1));
    json_t *detail = sql_json_parse(r, row, 15);
    json_object_set_new(o, "detail", json_is_object(detail) ? detail : json_object());
    if (!json_is_object(detail))
        json_decref(detail);
    json_object_set_new(o, "created_at", sql_json_time(r, row, 16));
    json_object_set_new(o, "updated_at", sql_json_time(r, row, 17));
    return o;
}

/* Parameters of st_record; detail_text is the caller's buffer to free. */
static void record_params(const struct lesson_input *in, int window_s, char *window_buf,
                          char **detail_text, const char *params[16])
{
    *detail_text = in->detail ? json_text(in->detail, NULL) : NULL;
    snprintf(window_buf, 24, "%d", window_s);
    const char *p[16] = {in->lesson_type, in->work_item_id, in->task_id,     in->stage,
                         in->agent,       in->repo,         in->root_cause,  in->suggestion,
                         in->status,      in->related_task, in->attribution, in->target_repo,
                         in->target_domain, in->source ? in->source : "auto",
                         *detail_text,    window_buf};
    memcpy(params, p, sizeof(p));
}

static void outcome_of(const PGresult *r, struct lesson_outcome *out)
{
    memset(out, 0, sizeof(*out));
    if (PQntuples(r) < 1)
        return;
    if (!sql_isnull(r, 0, 0)) {
        out->recorded = true;
        out->id = sql_ll(r, 0, 0);
    } else {
        out->duplicate_of = sql_ll(r, 0, 1);
    }
}

/* Logs the one warning of a lesson steward could not record. */
static void warn_not_recorded(const struct lessons *l, const char *lesson_type,
                              const char *reason, const char *sqlstate, const char *error)
{
    metrics_count(l->m, MC_LESSONS_FAILED, 1);
    struct log_line ln;
    log_begin(&ln, l->lg, LOG_WARN, "lesson not recorded");
    log_str(&ln, "lesson_type", lesson_type ? lesson_type : "");
    log_str(&ln, "reason", reason);
    if (sqlstate && *sqlstate)
        log_str(&ln, "sqlstate", sqlstate);
    if (error && *error)
        log_str(&ln, "error", error);
    log_end(&ln);
}

/* ---- recording on steward's own behalf, and the retry queue ----------------------- */

/* What one attempt at an auto record came to. */
enum attempt { AT_WRITTEN, AT_DUPLICATE, AT_RETRY, AT_FAILED };

/* A failure worth retrying later: the database was away, busy or locked, as opposed to
 * one that would fail again the same way (a missing table, missing privileges). */
static bool transient_state(const char *st)
{
    if (!st || !*st)
        return true; /* no SQLSTATE: the connection went away */
    return strncmp(st, "08", 2) == 0 || strncmp(st, "53", 2) == 0 ||
           strncmp(st, "57P", 3) == 0 || strcmp(st, "57014") == 0 || strcmp(st, "55P03") == 0 ||
           strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0;
}

/* Runs lessons_record() on c with lock_timeout lock_ms and statement_timeout stmt_ms;
 * returns its result (never NULL; the caller clears it). Closes c when its limits
 * could not be restored, so that no other statement runs with them. */
static PGresult *run_record(struct lessons *l, struct pool_conn *c, const char *const params[16],
                            int lock_ms, int stmt_ms)
{
    char lock[24], stmt[24], reset[24];
    snprintf(lock, sizeof(lock), "%dms", lock_ms);
    snprintf(stmt, sizeof(stmt), "%dms", stmt_ms);
    snprintf(reset, sizeof(reset), "%dms", pool_statement_timeout_ms(l->pool));
    const char *p_set[] = {lock, stmt}, *p_reset[] = {reset};
    const struct db_stmt *sts[] = {&st_limits_set, &st_record, &st_limits_reset};
    const char *const *ps[] = {p_set, params, p_reset};
    PGresult *r[3];
    pool_exec_batch(c, 3, sts, ps, r);
    bool restored = PQresultStatus(r[2]) == PGRES_TUPLES_OK;
    PQclear(r[0]);
    PQclear(r[2]);
    if (!restored && PQstatus(pool_conn_pg(c)) == CONNECTION_OK) {
        PGresult *again = pool_exec(c, &st_limits_reset, p_reset);
        restored = PQresultStatus(again) == PGRES_TUPLES_OK;
        PQclear(again);
        if (!restored)
            pool_pipe_end(c, true); /* closes it; the next checkout reconnects */
    }
    return r[1];
}

/* One try at writing the auto lesson of params: waits at most acquire_ms for a
 * connection and lock_ms for a lock. Permanent failures are logged here. */
static enum attempt attempt_record(struct lessons *l, const char *const params[16],
                                   int acquire_ms, int lock_ms, int stmt_ms)
{
    struct pool_conn *c;
    if (pool_acquire_within(l->pool, acquire_ms, &c) != ST_OK)
        return AT_RETRY;
    PGresult *r = run_record(l, c, params, lock_ms, stmt_ms);
    enum attempt at;
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        struct lesson_outcome o;
        outcome_of(r, &o);
        at = o.recorded ? AT_WRITTEN : AT_DUPLICATE;
        if (o.recorded)
            metrics_count(l->m, MC_LESSONS_RECORDED, 1);
    } else if (transient_state(pool_sqlstate(r))) {
        at = AT_RETRY;
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
        msg[strcspn(msg, "\n")] = '\0';
        warn_not_recorded(l, params[0], "database error", pool_sqlstate(r), msg);
        at = AT_FAILED;
    }
    PQclear(r);
    pool_release(l->pool, c); /* a connection that broke meanwhile is closed here */
    return at;
}

static void pending_params(const struct lessons *l, const struct pending *p, char *window,
                           const char *params[16])
{
    snprintf(window, 24, "%d", l->dedup_window_s);
    const char *v[16] = {p->lesson_type, p->work_item_id, NULL, p->stage, NULL, NULL, NULL,
                         NULL,           NULL,            NULL, NULL,     NULL, NULL, "auto",
                         p->detail,      window};
    memcpy(params, v, sizeof(v));
}

static char *dup_into(char **at, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *out = memcpy(*at, s, n);
    *at += n;
    return out;
}

/* Appends a copy of the lesson to the retry queue, or counts and logs an overflow.
 * Called with l->mu held. */
static void enqueue_locked(struct lessons *l, const char *type, const char *work,
                           const char *stage, const char *detail)
{
    if (l->queued >= l->queue_max) {
        metrics_count(l->m, MC_LESSONS_DROPPED, 1);
        l->dropped_unlogged++;
        int64_t now = clock_now_us();
        /* at most one line a second, carrying how many went since the last one */
        if (l->overflow_logged_us == 0 || now - l->overflow_logged_us >= 1000000) {
            struct log_line ln;
            log_begin(&ln, l->lg, LOG_WARN, "lesson queue full; lesson dropped");
            log_str(&ln, "lesson_type", type);
            log_int(&ln, "dropped", l->dropped_unlogged);
            log_int(&ln, "queue_max", l->queue_max);
            log_end(&ln);
            l->dropped_unlogged = 0;
            l->overflow_logged_us = now;
        }
        return;
    }
    size_t need = sizeof(struct pending) + strlen(type) + 1 + (work ? strlen(work) + 1 : 0) +
                  (stage ? strlen(stage) + 1 : 0) + (detail ? strlen(detail) + 1 : 0);
    struct pending *p = malloc(need);
    if (!p) {
        metrics_count(l->m, MC_LESSONS_DROPPED, 1);
        warn_not_recorded(l, type, "out of memory", NULL, NULL);
        return;
    }
    char *at = (char *)(p + 1);
    p->next = NULL;
    p->lesson_type = dup_into(&at, type);
    p->work_item_id = dup_into(&at, work);
    p->stage = dup_into(&at, stage);
    p->detail = dup_into(&at, detail);
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
    if (l->queued++ == 0) {
        struct log_line ln;
        /* info: nothing is lost yet (an overflow is the warning) */
        log_begin(&ln, l->lg, LOG_INFO, "lessons journal busy; lessons queued for retry");
        log_str(&ln, "lesson_type", type);
        log_end(&ln);
    }
    metrics_count(l->m, MC_LESSONS_DEFERRED, 1);
    metrics_gauge_add(l->m, MG_LESSONS_QUEUED, 1);
}

/* Writes queued lessons, oldest first, until the queue is empty, an attempt must be
 * retried later, or the deadline passes. Returns how many rows were written. */
static int drain(struct lessons *l, struct deadline until, int stmt_ms)
{
    int written = 0, done = 0;
    pthread_mutex_lock(&l->drain_mu);
    for (;;) {
        pthread_mutex_lock(&l->mu);
        struct pending *p = l->head; /* only a drain removes entries */
        pthread_mutex_unlock(&l->mu);
        if (!p || deadline_passed(until))
            break;
        int64_t left = deadline_left_ms(until);
        int wait = stmt_ms < left ? stmt_ms : (int)(left > 0 ? left : 1);
        char window[24];
        const char *params[16];
        pending_params(l, p, window, params);
        enum attempt at = attempt_record(l, params, wait, wait, wait);
        if (at == AT_RETRY)
            break;
        written += at == AT_WRITTEN;
        done++;
        pthread_mutex_lock(&l->mu);
        l->head = p->next;
        if (!l->head)
            l->tail = NULL;
        l->queued--;
        bool empty = l->queued == 0;
        pthread_mutex_unlock(&l->mu);
        metrics_gauge_add(l->m, MG_LESSONS_QUEUED, -1);
        free(p);
        if (empty) {
            struct log_line ln;
            log_begin(&ln, l->lg, LOG_INFO, "queued lessons written");
            log_int(&ln, "done", done);
            log_int(&ln, "written", written);
            log_end(&ln);
        }
    }
    pthread_mutex_unlock(&l->drain_mu);
    return written;
}

/* A drain attempt from the background job: a locked table holds a worker this long
 * at most per period. */
#define DRAIN_STATEMENT_MS 250
#define DRAIN_PERIOD_MS 250
#define DRAIN_RUN_MS 2000

static void drain_job(void *ctx)
{
    struct lessons *l = ctx;
    pthread_mutex_lock(&l->mu);
    bool any = l->head != NULL;
    pthread_mutex_unlock(&l->mu);
    if (any)
        drain(l, deadline_in_ms(DRAIN_RUN_MS), DRAIN_STATEMENT_MS);
}

int lessons_start(struct lessons *l, struct sched *sc)
{
    if (!l || !l->enabled)
        return 0;
    struct sched_job job = {
        .name = "lessons-retry", .fn = drain_job, .ctx = l, .period_ms = DRAIN_PERIOD_MS};
    return sched_add(sc, &job);
}

int lessons_flush(struct lessons *l, int budget_ms)
{
    if (!l || !l->enabled)
        return 0;
    struct deadline until = deadline_in_ms(budget_ms);
    int written = 0, left;
    for (;;) {
        written += drain(l, until, DRAIN_STATEMENT_MS);
        left = lessons_queued(l);
        if (left == 0 || deadline_passed(until))
            break;
        clock_sleep_us(50000); /* the database is busy or away: try again shortly */
    }
    if (left > 0) {
        struct log_line ln;
        log_begin(&ln, l->lg, LOG_WARN, "queued lessons not written before shutdown");
        log_int(&ln, "count", left);
        log_end(&ln);
    }
    return written;
}

int lessons_queued(struct lessons *l)
{
    if (!l)
        return 0;
    pthread_mutex_lock(&l->mu);
    int n = l->queued;
    pthread_mutex_unlock(&l->mu);
    return n;
}

bool lessons_record_auto(struct lessons *l, const char *lesson_type, const char *work_item_id,
                         const char *stage, json_t *detail)
{
    if (!l || !l->enabled)
        return false;
    if (!lesson_type || !jv_is_slug(lesson_type) || (work_item_id && !id_ok(work_item_id)) ||
        (stage && !id_ok(stage))) {
        warn_not_recorded(l, lesson_type && jv_is_slug(lesson_type) ? lesson_type : "",
                          "invalid lesson_type, work_item_id or stage", NULL, NULL);
        return false;
    }
    json_t *wrapped = NULL;
    if (detail && !json_is_object(detail)) {
        wrapped = json_pack("{s:O}", "value", detail);
        detail = wrapped;
    }
    char *detail_text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
    json_decref(wrapped);
    if (detail && !detail_text) {
        warn_not_recorded(l, lesson_type, "out of memory", NULL, NULL);
        return false;
    }
    struct pending p = {NULL, (char *)lesson_type, (char *)work_item_id, (char *)stage,
                        detail_text};
    char window[24];
    const char *params[16];
    pending_params(l, &p, window, params);
    bool written = false;
    /* Lessons already waiting go first (and a locked table holds up only the first
     * caller): then this one waits behind them, and the caller not at all. */
    pthread_mutex_lock(&l->mu);
    bool behind = l->head != NULL;
    if (behind)
        enqueue_locked(l, lesson_type, work_item_id, stage, detail_text);
    pthread_mutex_unlock(&l->mu);
    if (!behind) {
        int backstop = l->record_wait_ms > AUTO_BACKSTOP_MS ? l->record_wait_ms : AUTO_BACKSTOP_MS;
        enum attempt at = attempt_record(l, params, l->record_wait_ms, l->record_wait_ms, backstop);
        written = at == AT_WRITTEN;
        if (at == AT_RETRY) {
            pthread_mutex_lock(&l->mu);
            enqueue_locked(l, lesson_type, work_item_id, stage, detail_text);
            pthread_mutex_unlock(&l->mu);
        }
    }
    free(detail_text);
    return written;
}

int lessons_record(struct lessons *l, const struct lesson_input *in, struct lesson_outcome *out)
{
    memset(out, 0, sizeof(*out));
    if (!lessons_enabled(l))
        return ST_EDISABLED;
    char window[24], *detail_text = NULL;
    const char *params[16];
    record_params(in, l->dedup_window_s, window, &detail_text, params);
    if (in->detail && !detail_text)
        return ST_ENOMEM;
    struct pool_conn *c;
    int rc = pool_acquire(l->pool, &c);
    if (rc == ST_OK) {
        PGresult *r = run_record(l, c, params, REST_LOCK_MS, pool_statement_timeout_ms(l->pool));
        rc = pool_result_err(c, r);
        if (rc == ST_OK) {
            outcome_of(r, out);
            if (out->recorded)
                metrics_count(l->m, MC_LESSONS_RECORDED, 1);
            else if (out->duplicate_of == 0)
                rc = ST_EINTERNAL;
        }
        PQclear(r);
        pool_release(l->pool, c);
    }
    if (rc != ST_OK)
        metrics_count(l->m, MC_LESSONS_FAILED, 1);
    free(detail_text);
    return rc;
}

int lessons_get(struct lessons *l, long long id, json_t **out)
{
    *out = NULL;
    if (!lessons_enabled(l))
        return ST_EDISABLED;
    char idbuf[24];
    const char *params[] = {sql_fmt_ll(idbuf, id)};
    struct pool_conn *c;
    int rc = pool_acquire(l->pool, &c);
    if (rc != ST_OK)
        return rc;
    PGresult *r = pool_exec(c, &st_get, params);
    rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 0)
        rc = ST_ENOTFOUND;
    if (rc == ST_OK) {
        *out = row_json(r, 0);
        if (!*out)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    pool_release(l->pool, c);
    return rc;
}

int lessons_list(struct lessons *l, const struct lesson_filter *f, int limit, long long before_id,
                 json_t **items, long long *next_before)
{
    *items = NULL;
    *next_before = 0;
    if (!lessons_enabled(l))
        return ST_EDISABLED;
    int variant = (f->lesson_type ? 1 : 0) | (f->status ? 2 : 0) | (f->repo ? 4 : 0) |
                  (f->work_item_id ? 8 : 0);
    const char *params[] = {NULL, NULL, f->lesson_type, f->status, f->repo, f->work_item_id};
    return sql_page(l->pool, &st_list[variant], params, before_id, limit, row_json, items,
                    next_before);
}

static const struct db_stmt st_erase_user = {
    "lessons_erase_user",
    "WITH u AS (UPDATE lessons SET detail = jsonb_set(detail::jsonb, '{user_id}', "
    "to_jsonb($2::text))::json WHERE (detail->>'user_id') = $1 RETURNING 1) "
    "SELECT count(*) FROM u",
    2};

int lessons_erase_user_tx(struct lessons *l, struct pool_conn *c, const char *user_id,
                          const char *pseudonym, json_t *counts)
{
    /* switched off, the table may be missing (docs/api.md, "Kill switch"): a savepoint
     * lets the erasure go on without it */
    bool guarded = !lessons_enabled(l);
    int rc = guarded ? pool_cmd(c, "SAVEPOINT lessons_erase") : ST_OK;
    if (rc != ST_OK)
        return rc;
    const char *p[] = {user_id, pseudonym};
    PGresult *r = pool_exec(c, &st_erase_user, p);
    long long n = 0;
    rc = pool_result_err(c, r);
    if (rc == ST_OK)
        n = sql_ll(r, 0, 0);
    else if (guarded && strcmp(pool_sqlstate(r), "42P01") == 0) /* undefined_table */
        rc = pool_cmd(c, "ROLLBACK TO SAVEPOINT lessons_erase");
    PQclear(r);
    if (rc == ST_OK && guarded)
        rc = pool_cmd(c, "RELEASE SAVEPOINT lessons_erase");
    if (rc == ST_OK)
        json_object_set_new(counts, "lessons_pseudonymised", json_integer(n));
    return rc;
}

struct update_tx {
    const char *params[2];
    const json_t *changes;
    const char *actor;
    json_t *out;
};

/* The update and its audit row in one transaction. The audit names the fields changed
 * (and the new status), not their free text. */
static int update_fn(struct pool_conn *c, void *arg)
{
    struct update_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    PGresult *r = pool_exec(c, &st_update, t->params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 0)
        rc = ST_ENOTFOUND;
    if (rc == ST_OK) {
        t->out = row_json(r, 0);
        if (!t->out)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    if (rc != ST_OK)
        return rc;
    json_t *fields = json_array();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)t->changes, k, v) json_array_append_new(fields, json_string(k));
    json_t *d = json_pack("{s:o}", "fields", fields);
    json_t *status = json_object_get(t->changes, "status");
    if (d && json_is_string(status))
        json_object_set(d, "status", status);
    char target[40];
    snprintf(target, sizeof(target), "lesson:%s", t->params[0]);
    rc = d ? audit_record_tx(c, t->actor, "lesson.update", target, d) : ST_ENOMEM;
    json_decref(d);
    return rc;
}

int lessons_update(struct lessons *l, long long id, const json_t *changes, const char *actor,
                   json_t **out)
{
    *out = NULL;
    if (!lessons_enabled(l))
        return ST_EDISABLED;
    char idbuf[24];
    char *text = json_text(changes, NULL);
    if (!text)
        return ST_ENOMEM;
    struct update_tx t = {{sql_fmt_ll(idbuf, id), text}, changes, actor, NULL};
    int rc = pool_tx(l->pool, update_fn, &t);
    free(text);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    *out = t.out;
    return ST_OK;
}

int lessons_snapshot(struct lessons *l, json_t **out)
{
    *out = NULL;
    if (!lessons_enabled(l)) {
        *out = json_pack("{s:b}", "enabled", 0);
        return *out ? ST_OK : ST_ENOMEM;
    }
    struct pool_conn *c;
    int rc = pool_acquire(l->pool, &c);
    if (rc != ST_OK)
        return rc;
    PGresult *r = pool_exec(c, &st_snapshot, NULL);
    rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        json_t *by_type = sql_json_parse(r, 0, 1);
        json_t *by_status = sql_json_parse(r, 0, 2);
        *out = json_pack("{s:b, s:I, s:o, s:o, s:I, s:o}", "enabled", 1, "total",
                         (json_int_t)sql_ll(r, 0, 0), "by_type",
                         json_is_object(by_type) ? by_type : json_object(), "by_status",
                         json_is_object(by_status) ? by_status : json_object(), "last_24h",
                         (json_int_t)sql_ll(r, 0, 3), "newest_at", sql_json_time(r, 0, 4));
        if (!json_is_object(by_type))
            json_decref(by_type);
        if (!json_is_object(by_status))
            json_decref(by_status);
        if (!*out)
            rc = ST_ENOMEM;
    }
    PQclear(r);
    pool_release(l->pool, c);
    return rc;
}
