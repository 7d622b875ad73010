/* The audit trail: recording (any capability, inside its own transaction), erasure's
 * pseudonymisation and the listing. Every SQL statement of the trail is here. */
#include "steward/audit.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "steward/err.h"
#include "steward/sql.h"

struct audit {
    struct pool *pool;
    const struct logger *lg;
};

static const struct db_stmt st_insert = {
    "audit_insert",
    "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4::jsonb)", 4};

/* The target index finds a user's rows; the pseudonym keeps them countable. */
static const struct db_stmt st_erase = {
    "audit_erase", "UPDATE audit_log SET target = 'user:' || $2 WHERE target = 'user:' || $1", 2};

/* Lists: one statement per combination of the indexed filters, so each plan can use the
 * index of its filter. $1 = id bound, $2 = limit, $3 = since (NULL: none), $4..$6 =
 * actor, action, target (NULL when not filtered; unused ones are only typed). since
 * also bounds the ids from below: every row at or after it has an id at least the
 * smallest id among them (found through the at index), so the scan stops there. */
#define AF_A " AND actor = $4"
#define AN_A " AND $4::text IS NULL"
#define AF_C " AND action = $5"
#define AN_C " AND $5::text IS NULL"
#define AF_T " AND target = $6"
#define AN_T " AND $6::text IS NULL"
#define LIST_SQL(a, c, t)                                                                          \
    "SELECT id, " SQL_US(                                                                          \
        "at") ", actor, action, target, detail FROM audit_log "                                    \
              "WHERE id < $1::int8 AND ($3::timestamptz IS NULL OR (at >= $3::timestamptz AND id " \
              ">= "                                                                                \
              "coalesce((SELECT min(id) FROM audit_log WHERE at >= $3::timestamptz), "             \
              "9223372036854775807)))" a c t " ORDER BY id DESC LIMIT $2::int4"
static const struct db_stmt st_list[8] = {
    {"audit_list_0", LIST_SQL(AN_A, AN_C, AN_T), 6},
    {"audit_list_1", LIST_SQL(AF_A, AN_C, AN_T), 6},
    {"audit_list_2", LIST_SQL(AN_A, AF_C, AN_T), 6},
    {"audit_list_3", LIST_SQL(AF_A, AF_C, AN_T), 6},
    {"audit_list_4", LIST_SQL(AN_A, AN_C, AF_T), 6},
    {"audit_list_5", LIST_SQL(AF_A, AN_C, AF_T), 6},
    {"audit_list_6", LIST_SQL(AN_A, AF_C, AF_T), 6},
    {"audit_list_7", LIST_SQL(AF_A, AF_C, AF_T), 6},
};

bool audit_action_valid(const char *s)
{
    if (!s || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.'))
            return false;
    }
    return n <= AUDIT_ACTION_MAX;
}

struct record {
    const char *params[4];
};

static int record_fn(struct pool_conn *c, void *arg)
{
    struct record *rec = arg;
    PGresult *r = pool_exec(c, &st_insert, rec->params);
    int rc = pool_result_err(c, r);
    PQclear(r);
    return rc;
}

/* Fills rec; *text is the caller's to free. */
static int record_params(struct record *rec, const char *actor, const char *action,
                         const char *target, const json_t *detail, char **text)
{
    *text = detail ? json_dumps(detail, JSON_COMPACT) : strdup("{}");
    if (!*text)
        return ST_ENOMEM;
    rec->params[0] = actor && *actor ? actor : "unknown";
    rec->params[1] = action;
    rec->params[2] = target && *target ? target : "unknown";
    rec->params[3] = *text;
    return ST_OK;
}

int audit_record_tx(struct pool_conn *c, const char *actor, const char *action, const char *target,
                    const json_t *detail)
{
    struct record rec;
    char *text;
    int rc = record_params(&rec, actor, action, target, detail, &text);
    if (rc == ST_OK)
        rc = record_fn(c, &rec);
    free(text);
    return rc;
}

int audit_record(struct pool *pool, const char *actor, const char *action, const char *target,
                 const json_t *detail)
{
    struct record rec;
    char *text;
    int rc = record_params(&rec, actor, action, target, detail, &text);
    if (rc == ST_OK)
        rc = pool_with(pool, record_fn, &rec);
    free(text);
    return rc;
}

int audit_erase_user_tx(struct pool_conn *c, const char *user_id, const char *pseudonym,
                        long long *count)
{
    const char *p[] = {user_id, pseudonym};
    PGresult *r = pool_exec(c, &st_erase, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        *count = atoll(PQcmdTuples(r));
    PQclear(r);
    return rc;
}

struct audit *audit_new(struct pool *pool, const struct logger *lg)
{
    struct audit *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->pool = pool;
    a->lg = lg;
    return a;
}

void audit_free(struct audit *a)
{
    free(a);
}

static json_t *row_json(const PGresult *r, int row)
{
    json_t *detail = sql_json_parse(r, row, 5);
    if (!json_is_object(detail)) {
        json_decref(detail);
        detail = json_object();
    }
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)sql_ll(r, row, 0), "at",
                     sql_json_time(r, row, 1), "actor", sql_json_str(r, row, 2), "action",
                     sql_json_str(r, row, 3), "target", sql_json_str(r, row, 4), "detail", detail);
}

int audit_list(struct audit *a, const struct audit_filter *f, int limit, long long before_id,
               json_t **items, long long *next_before)
{
    int variant = (f->actor ? 1 : 0) | (f->action ? 2 : 0) | (f->target ? 4 : 0);
    char since[32];
    const char *params[] = {
        NULL,     NULL,      f->has_since ? sql_fmt_time(since, f->since_us) : NULL,
        f->actor, f->action, f->target};
    return sql_page(a->pool, &st_list[variant], params, before_id, limit, row_json, items,
                    next_before);
}
