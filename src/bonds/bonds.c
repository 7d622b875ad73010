/* Bond ledger logic and SQL (docs/api.md). No transport here: the HTTP adapter validates
 * input and calls these functions. Answers are built as JSON text directly from the
 * result rows (jsonb columns are passed through as PostgreSQL prints them). */
#include "steward/bonds.h"

#include "bonds_int.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/audit.h"
#include "steward/cursor.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/jsonw.h"
#include "steward/dbpipe.h"
#include "steward/sql.h"
#include "steward/utf8.h"

struct bonds {
    struct pool *pool;
    struct dbpipe *dbpipe;
    const struct logger *lg;
};

/* ------------------------------------------------------------------------------------
 * Pure helpers
 * ---------------------------------------------------------------------------------- */

double bonds_round4(double value)
{
    /* %.4f rounds the exact binary value half to even; reading the text back gives the
     * nearest double to that decimal. 512 bytes hold even DBL_MAX with 4 decimals. */
    char text[512];
    snprintf(text, sizeof(text), "%.4f", value);
    return strtod(text, NULL);
}

bool bonds_etag_matches(const char *list, const char *etag)
{
    size_t n = strlen(etag);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (strncmp(p, etag, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
            return true;
        p = strchr(p, ',');
        if (!p)
            break;
    }
    return false;
}

bool bonds_valid_id(const char *s, size_t max_chars)
{
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *end = p + strlen(s);
    size_t chars = 0;
    while (p < end) {
        uint32_t cp;
        size_t n = utf8_decode(p, (size_t)(end - p), &cp);
        if (n == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) /* C0, DEL, C1 */
            return false;
        p += n;
        if (++chars > max_chars)
            return false;
    }
    return chars >= 1;
}

void bonds_note_format(struct buf *out, int64_t at_us, const char *note)
{
    int64_t secs = at_us / 1000000;
    if (at_us % 1000000 < 0)
        secs -= 1;
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    buf_printf(out, "[%04d-%02d-%02d %02d:%02d] ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
               tm.tm_hour, tm.tm_min);
    buf_append(out, note, strlen(note));
}

void bonds_detail_phase(struct buf *out, const char *from, const char *to)
{
    buf_printf(out, "%s -> %s", from, to);
}

void bonds_detail_risk(struct buf *out, const char *from, const char *to)
{
    buf_printf(out, "risk: %s -> %s", from, to);
}

void bonds_detail_cap(struct buf *out, long long old_cap, long long new_cap)
{
    buf_printf(out, "rate limit: %lld -> %lld msgs/day", old_cap, new_cap);
}

void bonds_detail_note(struct buf *out, const char *note)
{
    static const char prefix[] = "note added: ";
    buf_append(out, prefix, sizeof(prefix) - 1);
    buf_append(out, note, utf8_prefix(note, 100));
}

void bonds_rate_eval(long long cap, long long count, int64_t reset_at_us, int64_t now_us,
                     struct bonds_rate *out)
{
    const int64_t window_us = (int64_t)BONDS_WINDOW_S * 1000000;
    out->cap = cap;
    out->count = count;
    if (cap == 0) {
        out->allowed = true;
        out->remaining = -1;
        out->reset_in_s = 0;
        return;
    }
    int64_t elapsed = now_us - reset_at_us;
    if (count == 0)
        elapsed = 0; /* no window runs before the first message: it would start now */
    if (elapsed > window_us) {
        out->count = 0;
        elapsed = 0; /* the window would start now */
    }
    if (elapsed < 0)
        elapsed = 0;
    /* whole seconds after which more than 86400 s will have passed */
    out->reset_in_s = (window_us - elapsed) / 1000000 + 1;
    out->remaining = cap - out->count > 0 ? cap - out->count : 0;
    out->allowed = out->remaining > 0;
}

/* ------------------------------------------------------------------------------------
 * SQL
 * ---------------------------------------------------------------------------------- */

/* Every statement answering an entry selects these columns in this order. */
#define BOND_COLS                                                                          \
    "user_id, phase, prev_phase, archetype, " SQL_US("phase_entered_at") ", turn_count, "   \
    "peak_nodes::text, risk_level, daily_msg_cap, daily_msg_count, " SQL_US(               \
        "daily_msg_reset_at") ", egg_status, notes::text, " SQL_US("last_updated") ", id"
enum {
    BC_USER,
    BC_PHASE,
    BC_PREV,
    BC_ARCH,
    BC_ENTERED,
    BC_TURNS,
    BC_PEAKS,
    BC_RISK,
    BC_CAP,
    BC_COUNT,
    BC_RESET,
    BC_EGG,
    BC_NOTES,
    BC_UPDATED,
    BC_ID
};

/* Every statement answering events selects these columns in this order. */
#define EVENT_COLS SQL_US("created_at") ", event_type, detail, data::text, id"

static const struct db_stmt st_get = {
    "bonds_get", "SELECT " BOND_COLS " FROM bonds WHERE user_id = $1", 1};

#define LIST_TAIL                                                                          \
    " (last_updated, id) < ($1::timestamptz, $2::int8)"                                    \
    " ORDER BY last_updated DESC, id DESC LIMIT $3"
static const struct db_stmt st_list_all = {
    "bonds_list_all", "SELECT " BOND_COLS " FROM bonds WHERE" LIST_TAIL, 3};
static const struct db_stmt st_list_phase = {
    "bonds_list_phase", "SELECT " BOND_COLS " FROM bonds WHERE phase = $4 AND" LIST_TAIL, 4};
static const struct db_stmt st_list_risk = {
    "bonds_list_risk", "SELECT " BOND_COLS " FROM bonds WHERE risk_level = $4 AND" LIST_TAIL, 4};
static const struct db_stmt st_list_both = {
    "bonds_list_both",
    "SELECT " BOND_COLS " FROM bonds WHERE phase = $4 AND risk_level = $5 AND" LIST_TAIL, 5};

/* A search by user id prefix: the byte-wise range the prefix spans (text_pattern_ops
 * index bonds_user_prefix), then the same order and cursor as the lists. */
static const struct db_stmt st_list_prefix = {
    "bonds_list_prefix",
    "SELECT " BOND_COLS " FROM bonds WHERE user_id ~>=~ $4 AND user_id ~<~ $5"
    " AND starts_with(user_id, $4) AND ($6::text IS NULL OR phase = $6)"
    " AND ($7::text IS NULL OR risk_level = $7) AND" LIST_TAIL,
    7};

/* Locks the row for a write and reads what the writers need, with the time of the lock
 * (the clock after waiting, so times follow the order of the writes). */
static const struct db_stmt st_lock = {
    "bonds_lock",
    "SELECT phase, risk_level, peak_nodes::text, event_count, daily_msg_cap, " SQL_US(
        "clock_timestamp()") ", id, " SQL_US("last_updated") ", daily_msg_count"
                             " FROM bonds WHERE user_id = $1 FOR UPDATE",
    1};
static const struct db_stmt st_ensure = {
    "bonds_ensure",
    "INSERT INTO bonds (user_id, phase_entered_at, daily_msg_reset_at, last_updated)"
    " SELECT $1, t.now, t.now, t.now FROM (SELECT clock_timestamp() AS now) t"
    " ON CONFLICT (user_id) DO NOTHING",
    1};

static const struct db_stmt st_detect = {
    "bonds_detect",
    "UPDATE bonds SET prev_phase = coalesce($2, prev_phase), phase = $3,"
    " phase_entered_at = coalesce($4::timestamptz, phase_entered_at), risk_level = $5,"
    " archetype = $6, egg_status = $7, turn_count = coalesce($8::int8, turn_count),"
    " peak_nodes = coalesce($9::jsonb, peak_nodes), last_updated = $10::timestamptz,"
    " event_count = $11::int WHERE user_id = $1 RETURNING " BOND_COLS,
    11};
static const struct db_stmt st_set_cap = {
    "bonds_set_cap",
    "UPDATE bonds SET daily_msg_cap = $2::int, last_updated = $3::timestamptz,"
    " event_count = $4::int WHERE user_id = $1 RETURNING " BOND_COLS,
    4};
static const struct db_stmt st_add_note = {
    "bonds_add_note",
    "UPDATE bonds SET notes = (SELECT jsonb_agg(n.e ORDER BY n.o) FROM"
    " (SELECT t.e, t.o FROM jsonb_array_elements(notes || jsonb_build_array($2::text))"
    " WITH ORDINALITY AS t(e, o) ORDER BY t.o DESC LIMIT 20) n),"
    " last_updated = $3::timestamptz, event_count = $4::int WHERE user_id = $1"
    " RETURNING " BOND_COLS,
    4};

static const struct db_stmt st_event_add = {
    "bonds_event_add",
    "INSERT INTO bond_events (user_id, event_type, detail, data, created_at)"
    " VALUES ($1, $2, $3, $4::jsonb, $5::timestamptz) RETURNING " EVENT_COLS,
    5};
static const struct db_stmt st_event_trim = {
    "bonds_event_trim",
    "DELETE FROM bond_events WHERE id IN (SELECT id FROM bond_events WHERE user_id = $1"
    " ORDER BY id LIMIT $2::int)",
    2};

/* One row always: whether the user exists, then (when there are events) one row per
 * event newest first. */
static const struct db_stmt st_events = {
    "bonds_events",
    "SELECT b.user_id IS NOT NULL, " SQL_US("e.created_at") ", e.event_type, e.detail,"
    " e.data::text, e.id FROM (SELECT 1) one LEFT JOIN bonds b ON b.user_id = $1"
    " LEFT JOIN LATERAL (SELECT created_at, event_type, detail, data, id FROM bond_events"
    " WHERE user_id = b.user_id AND id < $2::int8 ORDER BY id DESC LIMIT $3::int) e ON true"
    " ORDER BY e.id DESC",
    3};

static const struct db_stmt st_rate = {
    "bonds_rate",
    "SELECT daily_msg_cap, daily_msg_count, " SQL_US("daily_msg_reset_at") ", " SQL_US(
        "clock_timestamp()") " FROM bonds WHERE user_id = $1",
    1};

/* Admits and counts one message in one statement: the row lock taken by the UPDATE
 * serialises concurrent consumers, and the WHERE clause is re-checked on the newest row
 * version after waiting, so N concurrent consumers against cap C admit exactly C. A
 * window older than 86400 s restarts at this message, and so does a window without any
 * message: the first window starts at the first consume, not when the row was created
 * (as the earlier ledger, whose reset time began at 0). */
#define WINDOW_OVER                                                                                \
    "(daily_msg_count = 0 OR now() - daily_msg_reset_at > interval '86400 seconds')"
#define CONSUME_SET                                                                                \
    "UPDATE bonds SET"                                                                             \
    " daily_msg_count = CASE WHEN " WINDOW_OVER " THEN 1 ELSE daily_msg_count + 1 END,"            \
    " daily_msg_reset_at = CASE WHEN " WINDOW_OVER " THEN now() ELSE daily_msg_reset_at END,"      \
    " last_updated = greatest(last_updated, now())"                                                \
    " WHERE user_id = $1 AND (daily_msg_cap = 0 OR daily_msg_count < daily_msg_cap "               \
    "OR " WINDOW_OVER ")"
#define CONSUME_RETURNING                                                                          \
    " RETURNING daily_msg_cap, daily_msg_count, " SQL_US("daily_msg_reset_at") ", "                \
    SQL_US("now()")
static const struct db_stmt st_consume = {"bonds_consume", CONSUME_SET CONSUME_RETURNING, 1};
/* The same consume inside an HTTP loop's group of consumes, which commit together
 * (dbpipe_job.group_st). It first sets lock_timeout for the rest of the group's transaction:
 * a row locked elsewhere then holds the rows the group updated before it for at most
 * that long; the group fails and each consume runs again alone, as st_consume, waiting
 * as long as statement_timeout allows. */
#define GROUP_LOCK_WAIT "50ms"
static const struct db_stmt st_consume_grouped = {
    "bonds_consume_grouped",
    CONSUME_SET " AND (SELECT set_config('lock_timeout', '" GROUP_LOCK_WAIT
                "', true)) IS NOT NULL" CONSUME_RETURNING,
    1};

static const struct db_stmt st_erase = {
    "bonds_erase",
    "WITH d AS (DELETE FROM bonds WHERE user_id = $1 RETURNING event_count) "
    "SELECT count(*), coalesce(sum(event_count), 0)::int8 FROM d",
    1};

/* ------------------------------------------------------------------------------------
 * JSON text of rows
 * ---------------------------------------------------------------------------------- */

static void json_time(struct buf *o, int64_t us)
{
    char t[32];
    jtime_format(us, t);
    buf_append(o, "\"", 1);
    buf_append(o, t, strlen(t));
    buf_append(o, "\"", 1);
}

static void json_key(struct buf *o, const char *key)
{
    buf_append(o, key, strlen(key));
}

/* The entry's strong ETag: every write moves last_updated or the count. */
static void etag_format(char out[BONDS_ETAG_MAX], long long id, long long updated_us,
                        long long count)
{
    snprintf(out, BONDS_ETAG_MAX, "\"%llx-%llx-%llx\"", (unsigned long long)id,
             (unsigned long long)updated_us, (unsigned long long)count);
}

static void bond_etag(char out[BONDS_ETAG_MAX], const PGresult *r, int row)
{
    etag_format(out, sql_ll(r, row, BC_ID), sql_ll(r, row, BC_UPDATED), sql_ll(r, row, BC_COUNT));
}

static void bond_json(struct buf *o, const PGresult *r, int row)
{
    json_key(o, "{\"user_id\":");
    jsonw_str(o, PQgetvalue(r, row, BC_USER));
    json_key(o, ",\"phase\":");
    jsonw_str(o, PQgetvalue(r, row, BC_PHASE));
    json_key(o, ",\"prev_phase\":");
    jsonw_str(o, PQgetvalue(r, row, BC_PREV));
    json_key(o, ",\"archetype\":");
    jsonw_str(o, PQgetvalue(r, row, BC_ARCH));
    json_key(o, ",\"phase_entered_at\":");
    json_time(o, sql_ll(r, row, BC_ENTERED));
    json_key(o, ",\"turn_count\":");
    json_key(o, PQgetvalue(r, row, BC_TURNS));
    json_key(o, ",\"peak_nodes\":");
    json_key(o, PQgetvalue(r, row, BC_PEAKS));
    json_key(o, ",\"risk_level\":");
    jsonw_str(o, PQgetvalue(r, row, BC_RISK));
    json_key(o, ",\"daily_msg_cap\":");
    json_key(o, PQgetvalue(r, row, BC_CAP));
    json_key(o, ",\"daily_msg_count\":");
    json_key(o, PQgetvalue(r, row, BC_COUNT));
    json_key(o, ",\"daily_msg_reset_at\":");
    json_time(o, sql_ll(r, row, BC_RESET));
    json_key(o, ",\"egg_status\":");
    jsonw_str(o, PQgetvalue(r, row, BC_EGG));
    json_key(o, ",\"notes\":");
    json_key(o, PQgetvalue(r, row, BC_NOTES));
    json_key(o, ",\"last_updated\":");
    json_time(o, sql_ll(r, row, BC_UPDATED));
    json_key(o, "}");
}

/* An event row whose columns start at col (EVENT_COLS order). */
static void event_json(struct buf *o, const PGresult *r, int row, int col)
{
    json_key(o, "{\"timestamp\":");
    json_time(o, sql_ll(r, row, col));
    json_key(o, ",\"event_type\":");
    jsonw_str(o, PQgetvalue(r, row, col + 1));
    json_key(o, ",\"detail\":");
    jsonw_str(o, PQgetvalue(r, row, col + 2));
    json_key(o, ",\"data\":");
    json_key(o, PQgetvalue(r, row, col + 3));
    json_key(o, "}");
}

/* Hands the built text to the caller; ST_ENOMEM when an append failed. */
/* Hands the built JSON to the caller when rc is ST_OK; releases it otherwise. */
static int finish_json(int rc, struct buf *o, char **json, size_t *len)
{
    if (rc != ST_OK) {
        buf_release(o);
        return rc;
    }
    if (o->oom || !o->data) {
        buf_release(o);
        return ST_ENOMEM;
    }
    *json = buf_detach(o, len);
    return ST_OK;
}

/* ------------------------------------------------------------------------------------
 * Construction
 * ---------------------------------------------------------------------------------- */

struct bonds *bonds_new(struct pool *pool, const struct logger *lg, struct dbpipe *dbpipe)
{
    struct bonds *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->pool = pool;
    b->dbpipe = dbpipe;
    b->lg = lg;
    return b;
}

void bonds_free(struct bonds *b)
{
    free(b);
}

/* ------------------------------------------------------------------------------------
 * Reads
 * ---------------------------------------------------------------------------------- */

/* One hot-path operation in flight: a chain of single statements through the dbpipe. */
enum op_stage { OP_GET, OP_CONSUME, OP_READ, OP_ENSURE };

struct bond_op {
    struct dbpipe_job job;
    struct bonds *b;
    enum op_stage stage;
    int attempts; /* consume statements sent */
    struct bonds_rate rate;
    bonds_json_done json_done;
    bonds_rate_done rate_done;
    void *arg;
    char user_id[]; /* copied */
};

static struct bond_op *op_new(struct bonds *b, const char *user_id, dbpipe_done_fn fn, void *arg)
{
    size_t n = strlen(user_id) + 1;
    struct bond_op *op = calloc(1, sizeof(*op) + n);
    if (!op)
        return NULL;
    memcpy(op->user_id, user_id, n);
    op->b = b;
    op->arg = arg;
    op->job.done = fn;
    op->job.arg = op;
    op->job.params[0] = op->user_id;
    return op;
}

/* Sends the next statement of op; its result comes back to op->job.done. */
static void op_send(struct bond_op *op, enum op_stage stage, const struct db_stmt *st)
{
    op->stage = stage;
    op->job.st = st;
    /* The consume locks only its user's row and may run again after a rollback: a lane
     * may commit it together with other consumes. */
    op->job.group_st = stage == OP_CONSUME ? &st_consume_grouped : NULL;
    op->job.lock_key = op->user_id;
    if (!op->b->dbpipe)
        dbpipe_run_inline(op->b->pool, &op->job);
    else if (dbpipe_submit(op->b->dbpipe, &op->job) != ST_OK)
        op->job.done(&op->job, NULL, ST_EUNAVAIL);
}

static void get_done(struct dbpipe_job *job, PGresult *r, int rc)
{
    struct bond_op *op = job->arg;
    struct buf out = {0};
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_ENOTFOUND;
    char etag[BONDS_ETAG_MAX] = "";
    if (rc == ST_OK) {
        bond_json(&out, r, 0);
        bond_etag(etag, r, 0);
    }
    PQclear(r);
    char *json = NULL;
    size_t len = 0;
    rc = finish_json(rc, &out, &json, &len);
    op->json_done(op->arg, rc, json, len, etag);
    free(op);
}

void bonds_get(struct bonds *b, const char *user_id, bonds_json_done done, void *arg)
{
    struct bond_op *op = op_new(b, user_id, get_done, arg);
    if (!op) {
        done(arg, ST_ENOMEM, NULL, 0, "");
        return;
    }
    op->json_done = done;
    op->job.read_only = true; /* may share a transaction with other reads */
    op_send(op, OP_GET, &st_get);
}

struct list_args {
    const struct db_stmt *st;
    const char *params[7];
    int limit;
    struct buf out;
};

static int list_fn(struct pool_conn *c, void *arg)
{
    struct list_args *a = arg;
    PGresult *r = pool_exec(c, a->st, a->params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        buf_release(&a->out);
        int n = PQntuples(r);
        int shown = n > a->limit ? a->limit : n;
        json_key(&a->out, "{\"items\":[");
        for (int i = 0; i < shown; i++) {
            if (i)
                json_key(&a->out, ",");
            bond_json(&a->out, r, i);
        }
        json_key(&a->out, "],\"next_cursor\":");
        if (n > a->limit) {
            char cur[CURSOR_LEN];
            cursor_encode(cur, sql_ll(r, shown - 1, BC_UPDATED), sql_ll(r, shown - 1, BC_ID));
            jsonw_str(&a->out, cur);
        } else {
            json_key(&a->out, "null");
        }
        json_key(&a->out, "}");
    }
    PQclear(r);
    return rc;
}

int bonds_list(struct bonds *b, const char *phase, const char *risk_level, int limit,
               const char *cursor, char **json, size_t *len)
{
    struct list_args a = {.limit = limit};
    char ts[32] = "infinity", idbuf[24], limbuf[24];
    int64_t cur_us = 0, cur_id = INT64_MAX;
    if (cursor) {
        if (cursor_decode(cursor, &cur_us, &cur_id) != 0)
            return ST_EINVALID;
        sql_fmt_time(ts, cur_us);
    }
    a.params[0] = ts;
    a.params[1] = sql_fmt_ll(idbuf, cur_id);
    a.params[2] = sql_fmt_ll(limbuf, (long long)limit + 1);
    if (phase && risk_level) {
        a.st = &st_list_both;
        a.params[3] = phase;
        a.params[4] = risk_level;
    } else if (phase) {
        a.st = &st_list_phase;
        a.params[3] = phase;
    } else if (risk_level) {
        a.st = &st_list_risk;
        a.params[3] = risk_level;
    } else {
        a.st = &st_list_all;
    }
    return finish_json(pool_with(b->pool, list_fn, &a), &a.out, json, len);
}

int bonds_search(struct bonds *b, const char *prefix, const char *phase, const char *risk_level,
                 int limit, const char *cursor, char **json, size_t *len)
{
    struct list_args a = {.limit = limit, .st = &st_list_prefix};
    char ts[32] = "infinity", idbuf[24], limbuf[24];
    int64_t cur_us = 0, cur_id = INT64_MAX;
    if (cursor) {
        if (cursor_decode(cursor, &cur_us, &cur_id) != 0)
            return ST_EINVALID;
        sql_fmt_time(ts, cur_us);
    }
    /* every id starting with prefix sorts below prefix + U+10FFFF, the highest character */
    size_t n = strlen(prefix);
    char *upper = malloc(n + 5);
    if (!upper)
        return ST_ENOMEM;
    memcpy(upper, prefix, n);
    memcpy(upper + n, "\xf4\x8f\xbf\xbf", 5);
    a.params[0] = ts;
    a.params[1] = sql_fmt_ll(idbuf, cur_id);
    a.params[2] = sql_fmt_ll(limbuf, (long long)limit + 1);
    a.params[3] = prefix;
    a.params[4] = upper;
    a.params[5] = phase;
    a.params[6] = risk_level;
    int rc = finish_json(pool_with(b->pool, list_fn, &a), &a.out, json, len);
    free(upper);
    return rc;
}

struct events_args {
    const char *params[3];
    int limit;
    struct buf out;
};

static int events_fn(struct pool_conn *c, void *arg)
{
    struct events_args *a = arg;
    PGresult *r = pool_exec(c, &st_events, a->params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && (PQntuples(r) < 1 || !sql_bool(r, 0, 0)))
        rc = ST_ENOTFOUND;
    if (rc == ST_OK) {
        buf_release(&a->out);
        int n = sql_isnull(r, 0, 5) ? 0 : PQntuples(r);
        int shown = n > a->limit ? a->limit : n;
        json_key(&a->out, "{\"items\":[");
        for (int i = 0; i < shown; i++) {
            if (i)
                json_key(&a->out, ",");
            event_json(&a->out, r, i, 1);
        }
        json_key(&a->out, "],\"next_cursor\":");
        if (n > a->limit) {
            char cur[CURSOR_LEN];
            cursor_encode(cur, sql_ll(r, shown - 1, 1), sql_ll(r, shown - 1, 5));
            jsonw_str(&a->out, cur);
        } else {
            json_key(&a->out, "null");
        }
        json_key(&a->out, "}");
    }
    PQclear(r);
    return rc;
}

int bonds_events(struct bonds *b, const char *user_id, int limit, const char *cursor,
                 char **json, size_t *len)
{
    struct events_args a = {.limit = limit};
    char idbuf[24], limbuf[24];
    int64_t cur_us = 0, cur_id = INT64_MAX;
    if (cursor && cursor_decode(cursor, &cur_us, &cur_id) != 0)
        return ST_EINVALID;
    a.params[0] = user_id;
    a.params[1] = sql_fmt_ll(idbuf, cur_id);
    a.params[2] = sql_fmt_ll(limbuf, (long long)limit + 1);
    return finish_json(pool_with(b->pool, events_fn, &a), &a.out, json, len);
}

/* ------------------------------------------------------------------------------------
 * Rate limit
 * ---------------------------------------------------------------------------------- */

struct rate_args {
    const char *user_id;
    bool found;
    bool admitted;
    struct bonds_rate rate;
};

/* Reads the stored state into a->rate (read-only; a missing row answers the defaults). */
static int rate_read(struct pool_conn *c, struct rate_args *a)
{
    const char *p[1] = {a->user_id};
    PGresult *r = pool_exec(c, &st_rate, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        a->found = PQntuples(r) == 1;
        if (a->found)
            bonds_rate_eval(sql_ll(r, 0, 0), sql_ll(r, 0, 1), sql_ll(r, 0, 2), sql_ll(r, 0, 3),
                            &a->rate);
        else
            bonds_rate_eval(0, 0, 0, 0, &a->rate);
    }
    PQclear(r);
    return rc;
}

static int rate_check_fn(struct pool_conn *c, void *arg)
{
    return rate_read(c, arg);
}

int bonds_rate_check(struct bonds *b, const char *user_id, struct bonds_rate *out)
{
    struct rate_args a = {.user_id = user_id};
    int rc = pool_with(b->pool, rate_check_fn, &a);
    if (rc == ST_OK)
        *out = a.rate;
    return rc;
}

static void consume_finish(struct bond_op *op, int rc)
{
    if (rc == ST_ELIMIT) {
        op->rate.allowed = false;
        op->rate.remaining = 0;
    }
    op->rate_done(op->arg, rc, &op->rate);
    free(op);
}

/* Each decision is the single conditional UPDATE; the other statements only find out
 * why nothing was admitted (no entry yet: create it and try again; cap reached: refuse;
 * the state changed in between, e.g. the cap was raised: try again, at most 4 times). */
static void consume_done(struct dbpipe_job *job, PGresult *r, int rc)
{
    struct bond_op *op = job->arg;
    if (rc != ST_OK) {
        PQclear(r);
        consume_finish(op, rc);
        return;
    }
    bool found = PQntuples(r) == 1;
    /* st_consume and st_rate both return cap, count, reset time and now */
    if (found && (op->stage == OP_CONSUME || op->stage == OP_READ))
        bonds_rate_eval(sql_ll(r, 0, 0), sql_ll(r, 0, 1), sql_ll(r, 0, 2), sql_ll(r, 0, 3),
                        &op->rate);
    else if (op->stage == OP_READ)
        bonds_rate_eval(0, 0, 0, 0, &op->rate); /* no entry: the defaults */
    PQclear(r);
    switch (op->stage) {
    case OP_CONSUME:
        if (found) {
            op->rate.allowed = true;
            consume_finish(op, ST_OK);
        } else {
            op_send(op, OP_READ, &st_rate);
        }
        return;
    case OP_READ:
        if (!found)
            op_send(op, OP_ENSURE, &st_ensure);
        else if (!op->rate.allowed || op->attempts >= 4)
            consume_finish(op, ST_ELIMIT);
        else
            break;
        return;
    case OP_ENSURE:
        if (op->attempts >= 4) {
            consume_finish(op, ST_ELIMIT);
            return;
        }
        break;
    case OP_GET:
        break;
    }
    op->attempts++;
    op_send(op, OP_CONSUME, &st_consume);
}

void bonds_consume(struct bonds *b, const char *user_id, bonds_rate_done done, void *arg)
{
    struct bond_op *op = op_new(b, user_id, consume_done, arg);
    if (!op) {
        struct bonds_rate none = {0};
        done(arg, ST_ENOMEM, &none);
        return;
    }
    op->rate_done = done;
    op->attempts = 1;
    op_send(op, OP_CONSUME, &st_consume);
}

/* ------------------------------------------------------------------------------------
 * Writes: one transaction each, the user's row locked first
 * ---------------------------------------------------------------------------------- */

struct locked {
    PGresult *r; /* the st_lock row */
    const char *phase;
    const char *risk;
    const char *peaks;
    long long event_count;
    long long cap;
    int64_t now_us;
    char now_text[32];
    char etag[BONDS_ETAG_MAX]; /* of the row as locked */
};

/* Locks the user's row, creating it with the defaults first when missing. Looking first
 * keeps the common case at one statement; when the row is missing, INSERT ... ON
 * CONFLICT DO NOTHING lets exactly one of several concurrent first writers create it
 * (the others wait for it and do nothing), and the next SELECT ... FOR UPDATE queues
 * behind whoever holds the row. */
static int lock_row(struct pool_conn *c, const char *user_id, struct locked *l)
{
    const char *p[1] = {user_id};
    memset(l, 0, sizeof(*l));
    for (int attempt = 0; attempt < 3; attempt++) {
        PGresult *r = pool_exec(c, &st_lock, p);
        int rc = pool_result_err(c, r);
        if (rc != ST_OK) {
            PQclear(r);
            return rc;
        }
        if (PQntuples(r) == 1) {
            l->r = r;
            l->phase = PQgetvalue(r, 0, 0);
            l->risk = PQgetvalue(r, 0, 1);
            l->peaks = PQgetvalue(r, 0, 2);
            l->event_count = sql_ll(r, 0, 3);
            l->cap = sql_ll(r, 0, 4);
            l->now_us = sql_ll(r, 0, 5);
            sql_fmt_time(l->now_text, l->now_us);
            etag_format(l->etag, sql_ll(r, 0, 6), sql_ll(r, 0, 7), sql_ll(r, 0, 8));
            return ST_OK;
        }
        PQclear(r);
        r = pool_exec(c, &st_ensure, p);
        rc = pool_result_err(c, r);
        PQclear(r);
        if (rc != ST_OK)
            return rc;
    }
    /* erased again and again between creating and locking: let the client retry */
    return ST_ECONFLICT;
}

static void unlock_row(struct locked *l)
{
    PQclear(l->r);
    l->r = NULL;
}

/* The event count after adding added events, and how many old ones must go. */
static long long events_after(const struct locked *l, int added, long long *drop)
{
    long long total = l->event_count + added;
    *drop = total > BONDS_EVENTS_KEPT ? total - BONDS_EVENTS_KEPT : 0;
    return total - *drop;
}

/* Appends one event; when out is not NULL, appends its JSON text there. */
static int add_event(struct pool_conn *c, const char *user_id, const char *type,
                     const char *detail, const char *data, const char *at, struct buf *out)
{
    const char *p[5] = {user_id, type, detail, data, at};
    PGresult *r = pool_exec(c, &st_event_add, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && out)
        event_json(out, r, 0, 0);
    PQclear(r);
    return rc;
}

static int trim_events(struct pool_conn *c, const char *user_id, long long drop)
{
    if (drop <= 0)
        return ST_OK;
    char n[24];
    const char *p[2] = {user_id, sql_fmt_ll(n, drop)};
    PGresult *r = pool_exec(c, &st_event_trim, p);
    int rc = pool_result_err(c, r);
    PQclear(r);
    return rc;
}

/* Runs an UPDATE answering BOND_COLS and appends the entry's JSON to out. */
static int update_bond(struct pool_conn *c, const struct db_stmt *st, const char *const *p,
                       struct buf *out, char *etag)
{
    PGresult *r = pool_exec(c, st, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_EINTERNAL; /* the row is locked by us: it cannot have gone */
    if (rc == ST_OK)
        bond_json(out, r, 0);
    if (rc == ST_OK && etag)
        bond_etag(etag, r, 0);
    PQclear(r);
    return rc;
}

/* Merges the vector into the stored peaks: a value above the stored peak (0 for a node
 * not stored yet) becomes the peak, rounded with bonds_round4. *merged is the new
 * jsonb text, or NULL when no peak moved. */
static int merge_peaks(const char *stored, const struct bonds_detection *d, char **merged)
{
    *merged = NULL;
    if (d->nnodes == 0)
        return ST_OK;
    json_error_t je;
    json_t *peaks = json_loads(stored, JSON_DECODE_INT_AS_REAL, &je);
    if (!json_is_object(peaks)) {
        json_decref(peaks);
        return ST_EINTERNAL;
    }
    bool changed = false;
    int rc = ST_OK;
    for (size_t i = 0; i < d->nnodes && rc == ST_OK; i++) {
        json_t *old = json_object_get(peaks, d->nodes[i].name);
        double peak = json_is_number(old) ? json_number_value(old) : 0.0;
        if (d->nodes[i].value > peak) {
            if (json_object_set_new(peaks, d->nodes[i].name,
                                    json_real(bonds_round4(d->nodes[i].value))) != 0)
                rc = ST_ENOMEM;
            changed = true;
        }
    }
    if (rc == ST_OK && changed) {
        struct buf o = {0};
        const char *key;
        json_t *val;
        bool first = true;
        buf_append(&o, "{", 1);
        json_object_foreach(peaks, key, val) {
            if (!first)
                buf_append(&o, ",", 1);
            first = false;
            jsonw_str(&o, key);
            buf_append(&o, ":", 1);
            jsonw_num(&o, json_number_value(val));
        }
        buf_append(&o, "}", 1);
        if (o.oom)
            rc = ST_ENOMEM;
        if (rc == ST_OK)
            *merged = buf_detach(&o, NULL);
        buf_release(&o);
    }
    json_decref(peaks);
    return rc;
}

struct detect_args {
    const char *user_id;
    const struct bonds_detection *d;
    struct buf out;
};

static int detect_fn(struct pool_conn *c, void *arg)
{
    struct detect_args *a = arg;
    const struct bonds_detection *d = a->d;
    buf_release(&a->out);
    struct locked l;
    int rc = lock_row(c, a->user_id, &l);
    if (rc != ST_OK)
        return rc;
    const char *phase = d->phase ? d->phase : "dormant";
    const char *risk = d->risk_level ? d->risk_level : "low";
    bool phase_moved = strcmp(phase, l.phase) != 0;
    bool risk_moved = strcmp(risk, l.risk) != 0;
    char *peaks = NULL;
    struct buf phase_detail = {0}, phase_data = {0}, risk_detail = {0}, risk_data = {0},
               event = {0};
    rc = merge_peaks(l.peaks, d, &peaks);
    if (rc != ST_OK)
        goto done;
    if (phase_moved) {
        bonds_detail_phase(&phase_detail, l.phase, phase);
        buf_append(&phase_data, "{\"from\":", 8);
        jsonw_str(&phase_data, l.phase);
        buf_append(&phase_data, ",\"to\":", 6);
        jsonw_str(&phase_data, phase);
        buf_append(&phase_data, ",\"confidence\":", 14);
        jsonw_num(&phase_data, d->confidence);
        buf_append(&phase_data, ",\"primary_signal\":", 18);
        jsonw_str(&phase_data, d->primary_signal ? d->primary_signal : "");
        buf_append(&phase_data, "}", 1);
    }
    if (risk_moved) {
        bonds_detail_risk(&risk_detail, l.risk, risk);
        buf_append(&risk_data, "{\"from\":", 8);
        jsonw_str(&risk_data, l.risk);
        buf_append(&risk_data, ",\"to\":", 6);
        jsonw_str(&risk_data, risk);
        buf_append(&risk_data, "}", 1);
    }
    if (phase_detail.oom || phase_data.oom || risk_detail.oom || risk_data.oom) {
        rc = ST_ENOMEM;
        goto done;
    }
    long long drop;
    long long count = events_after(&l, (int)phase_moved + (int)risk_moved, &drop);
    char turns[24], countbuf[24];
    const char *p[11] = {
        a->user_id,
        phase_moved ? l.phase : NULL,
        phase,
        phase_moved ? l.now_text : NULL,
        risk,
        d->archetype ? d->archetype : "unknown",
        d->egg_status ? d->egg_status : "none",
        d->has_turn_count ? sql_fmt_ll(turns, d->turn_count) : NULL,
        peaks,
        l.now_text,
        sql_fmt_ll(countbuf, count),
    };
    buf_append(&a->out, "{\"bond\":", 8);
    rc = update_bond(c, &st_detect, p, &a->out, NULL);
    if (rc == ST_OK && phase_moved)
        rc = add_event(c, a->user_id, "phase_transition", phase_detail.data, phase_data.data,
                       l.now_text, &event);
    if (rc == ST_OK && risk_moved)
        rc = add_event(c, a->user_id, "risk_change", risk_detail.data, risk_data.data,
                       l.now_text, NULL);
    if (rc == ST_OK)
        rc = trim_events(c, a->user_id, drop);
    if (rc == ST_OK) {
        buf_append(&a->out, ",\"event\":", 9);
        if (phase_moved)
            buf_append(&a->out, event.data, event.len);
        else
            buf_append(&a->out, "null", 4);
        buf_append(&a->out, "}", 1);
    }
done:
    free(peaks);
    buf_release(&phase_detail);
    buf_release(&phase_data);
    buf_release(&risk_detail);
    buf_release(&risk_data);
    buf_release(&event);
    unlock_row(&l);
    return rc;
}

int bonds_detect(struct bonds *b, const char *user_id, const struct bonds_detection *d,
                 char **json, size_t *len)
{
    struct detect_args a = {.user_id = user_id, .d = d};
    return finish_json(pool_tx(b->pool, detect_fn, &a), &a.out, json, len);
}

struct admin_args {
    const char *user_id;
    long long cap;
    const char *note;
    const char *actor;
    const char *if_match; /* NULL: unconditional */
    char etag[BONDS_ETAG_MAX];
    struct buf out;
};

/* What one admin write changes, from the locked row: value is the UPDATE's $2 (the new
 * column value), detail and data the admin_action event's. */
typedef void (*admin_parts_fn)(const struct admin_args *a, const struct locked *l,
                               struct buf *value, struct buf *detail, struct buf *data);

/* The audit row of an admin write (a note's text stays out of it: user content). */
static int audit_admin(struct pool_conn *c, const struct admin_args *a, const struct locked *l)
{
    struct buf target = {0};
    buf_printf(&target, "user:%s", a->user_id);
    json_t *d = a->note ? json_pack("{s:I}", "note_chars", (json_int_t)utf8_count(a->note))
                        : json_pack("{s:I, s:I}", "old_cap", (json_int_t)l->cap, "new_cap",
                                    (json_int_t)a->cap);
    int rc = target.oom || !d ? ST_ENOMEM
                              : audit_record_tx(c, a->actor, a->note ? "bond.note.add"
                                                                     : "bond.cap.set",
                                                target.data, d);
    json_decref(d);
    buf_release(&target);
    return rc;
}

/* The transaction of an admin write: lock the row, update it with st ($1 user, $2 the
 * value, $3 the time of the lock, $4 the event count), record one admin_action event and
 * drop the events past the kept number. The entry's JSON goes to a->out. */
static int admin_tx(struct pool_conn *c, struct admin_args *a, const struct db_stmt *st,
                    admin_parts_fn parts)
{
    buf_release(&a->out);
    struct locked l;
    int rc = lock_row(c, a->user_id, &l);
    if (rc != ST_OK)
        return rc;
    if (a->if_match && !bonds_etag_matches(a->if_match, l.etag)) {
        unlock_row(&l);
        return ST_ECONFLICT; /* changed since the caller read it: nothing is written */
    }
    struct buf value = {0}, detail = {0}, data = {0};
    parts(a, &l, &value, &detail, &data);
    long long drop;
    long long count = events_after(&l, 1, &drop);
    char countbuf[24];
    const char *p[4] = {a->user_id, value.data, l.now_text, sql_fmt_ll(countbuf, count)};
    if (value.oom || detail.oom || data.oom)
        rc = ST_ENOMEM;
    if (rc == ST_OK)
        rc = update_bond(c, st, p, &a->out, a->etag);
    if (rc == ST_OK)
        rc = add_event(c, a->user_id, "admin_action", detail.data, data.data, l.now_text, NULL);
    if (rc == ST_OK)
        rc = trim_events(c, a->user_id, drop);
    if (rc == ST_OK)
        rc = audit_admin(c, a, &l);
    buf_release(&value);
    buf_release(&detail);
    buf_release(&data);
    unlock_row(&l);
    return rc;
}

static void cap_parts(const struct admin_args *a, const struct locked *l, struct buf *value,
                      struct buf *detail, struct buf *data)
{
    buf_printf(value, "%lld", a->cap);
    bonds_detail_cap(detail, l->cap, a->cap);
    buf_printf(data, "{\"old_cap\":%lld,\"new_cap\":%lld,\"actor\":", l->cap, a->cap);
    jsonw_str(data, a->actor);
    buf_append(data, "}", 1);
}

static int set_cap_fn(struct pool_conn *c, void *arg)
{
    return admin_tx(c, arg, &st_set_cap, cap_parts);
}

int bonds_set_cap(struct bonds *b, const char *user_id, long long cap, const char *actor,
                  const char *if_match, char **json, size_t *len, char etag[BONDS_ETAG_MAX])
{
    if (cap < 0 || cap > BONDS_CAP_MAX)
        return ST_EINVALID;
    struct admin_args a = {.user_id = user_id, .cap = cap, .actor = actor, .if_match = if_match};
    int rc = finish_json(pool_tx(b->pool, set_cap_fn, &a), &a.out, json, len);
    if (rc == ST_OK && etag)
        memcpy(etag, a.etag, BONDS_ETAG_MAX);
    return rc;
}

static void note_parts(const struct admin_args *a, const struct locked *l, struct buf *value,
                       struct buf *detail, struct buf *data)
{
    bonds_note_format(value, l->now_us, a->note);
    bonds_detail_note(detail, a->note);
    buf_append(data, "{\"note\":", 8);
    jsonw_str(data, a->note);
    buf_append(data, ",\"actor\":", 9);
    jsonw_str(data, a->actor);
    buf_append(data, "}", 1);
}

static int add_note_fn(struct pool_conn *c, void *arg)
{
    return admin_tx(c, arg, &st_add_note, note_parts);
}

int bonds_add_note(struct bonds *b, const char *user_id, const char *note, const char *actor,
                   char **json, size_t *len)
{
    size_t chars = utf8_count(note);
    if (chars < 1 || chars > BONDS_NOTE_MAX)
        return ST_EINVALID;
    struct admin_args a = {.user_id = user_id, .note = note, .actor = actor};
    return finish_json(pool_tx(b->pool, add_note_fn, &a), &a.out, json, len);
}

/* ------------------------------------------------------------------------------------
 * Erasure
 * ---------------------------------------------------------------------------------- */

int bonds_erase_user_tx(struct bonds *b, struct pool_conn *c, const char *user_id,
                        json_t *counts)
{
    (void)b;
    const char *p[1] = {user_id};
    /* the cascade removes the events (event_count says how many); deleting the entry
     * takes its row lock, so a writer holding it finishes before and one arriving later
     * starts afresh */
    PGresult *r = pool_exec(c, &st_erase, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 1) {
        json_object_set_new(counts, "bonds", json_integer(sql_ll(r, 0, 0)));
        json_object_set_new(counts, "bond_events", json_integer(sql_ll(r, 0, 1)));
    }
    PQclear(r);
    return rc;
}
