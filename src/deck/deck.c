/* The Observation Deck's logic: its files (embedded or from STEWARD_DECK_DIR) and the
 * overview's statements. Every statement reads through an index (migrations/0010_deck.sql)
 * or a bounded range; all of them go out in one pipeline. */
#include "steward/deck.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/clock.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/sql.h"

struct deck {
    struct pool *pool;
    const struct logger *lg;
    bool enabled;
    char *dir; /* NULL: embedded */
    /* The overview, computed at most once per DECK_OVERVIEW_TTL_US on this instance
     * however many consoles refresh (its bond grid reads every bond's index entry). */
    pthread_mutex_t mu;
    char *overview;
    size_t overview_len;
    int64_t overview_at_us;
};

#define DECK_OVERVIEW_TTL_US 4000000

struct deck *deck_new(struct pool *pool, const struct logger *lg, const struct deck_opts *opts)
{
    struct deck *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->pool = pool;
    d->lg = lg;
    d->enabled = opts->enabled;
    pthread_mutex_init(&d->mu, NULL);
    if (opts->dir && opts->dir[0] && !(d->dir = strdup(opts->dir))) {
        free(d);
        return NULL;
    }
    return d;
}

void deck_free(struct deck *d)
{
    if (!d)
        return;
    free(d->dir);
    free(d->overview);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* ---- files ---- */

static const char *type_of(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {{".html", "text/html; charset=utf-8"},
                 {".css", "text/css; charset=utf-8"},
                 {".js", "text/javascript; charset=utf-8"},
                 {".svg", "image/svg+xml"},
                 {".png", "image/png"}};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return NULL;
}

/* A served name: [A-Za-z0-9._-], not starting with a dot, with a known type. */
static bool name_ok(const char *name)
{
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n >= 1 && n <= 64 && name[0] != '.' && type_of(name);
}

#define DECK_FILE_MAX (4 << 20)

static int read_disk(const struct deck *d, const char *name, struct deck_file *out,
                     unsigned char **owned)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", d->dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT || errno == ENOTDIR ? ST_ENOTFOUND : ST_EINTERNAL;
    unsigned char *buf = malloc(DECK_FILE_MAX);
    size_t n = buf ? fread(buf, 1, DECK_FILE_MAX, f) : 0;
    bool err = !buf || ferror(f) || n == DECK_FILE_MAX;
    fclose(f);
    if (err) {
        free(buf);
        return buf ? ST_EINTERNAL : ST_ENOMEM;
    }
    static _Thread_local char etag[72];
    unsigned char h[32];
    char hex[65];
    crypto_sha256(buf, n, h);
    crypto_hex(h, 16, hex);
    snprintf(etag, sizeof(etag), "\"%s\"", hex);
    *owned = buf;
    *out = (struct deck_file){name, type_of(name), buf, n, etag};
    return ST_OK;
}

int deck_file_get(const struct deck *d, const char *name, struct deck_file *out,
                  unsigned char **owned)
{
    *owned = NULL;
    if (!d->enabled)
        return ST_EDISABLED;
    if (!name_ok(name))
        return ST_ENOTFOUND;
    if (d->dir)
        return read_disk(d, name, out, owned);
    for (int i = 0; i < deck_embedded_count; i++)
        if (strcmp(deck_embedded[i].name, name) == 0) {
            *out = deck_embedded[i];
            return ST_OK;
        }
    return ST_ENOTFOUND;
}

/* ---- the overview ---- */

#define UTC(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define ATTENTION_LIMIT "20"
#define ATTENTION_COLS                                                                             \
    "user_id, phase, risk_level, daily_msg_cap, daily_msg_count, " UTC("last_updated")

static const struct db_stmt st_grid = {
    "deck_grid",
    "SELECT phase, risk_level, count(*) FROM bonds GROUP BY phase, risk_level"
    " ORDER BY phase, risk_level",
    0};
/* Two index-ordered scans (bonds_risk_updated) merged: no sort of every risky bond. */
static const struct db_stmt st_at_risk = {
    "deck_at_risk",
    "SELECT " ATTENTION_COLS " FROM ((SELECT * FROM bonds WHERE risk_level = 'critical'"
    " ORDER BY last_updated DESC, id DESC LIMIT " ATTENTION_LIMIT ") UNION ALL"
    " (SELECT * FROM bonds WHERE risk_level = 'high' ORDER BY last_updated DESC, id DESC"
    " LIMIT " ATTENTION_LIMIT ")) b ORDER BY risk_level = 'critical' DESC, last_updated DESC"
    " LIMIT " ATTENTION_LIMIT,
    0};
static const struct db_stmt st_at_cap = {
    "deck_at_cap",
    "SELECT " ATTENTION_COLS " FROM bonds WHERE daily_msg_cap > 0"
    " AND daily_msg_count >= daily_msg_cap"
    " AND daily_msg_reset_at > now() - interval '86400 seconds'"
    " ORDER BY last_updated DESC LIMIT " ATTENTION_LIMIT,
    0};
/* Users with queued proposals whose devices were all silent for 3 days (or who have none).
 * last_seen_at is written at hello and close only: a device held by an instance
 * (devices.host) counts as seen until that instance's presence lease lapsed. */
static const struct db_stmt st_unreached = {
    "deck_unreached",
    "SELECT q.user_id, q.queued, (SELECT " UTC(
        "max(d.last_seen_at)") " FROM devices d WHERE d.user_id = q.user_id)"
                               " FROM (SELECT user_id, count(*) AS queued FROM proposals WHERE "
                               "status = 'queued'"
                               " GROUP BY user_id) q WHERE NOT EXISTS (SELECT 1 FROM devices d "
                               "WHERE d.user_id = q.user_id"
                               " AND (d.last_seen_at > now() - interval '3 days'"
                               " OR EXISTS (SELECT 1 FROM device_hosts h WHERE h.instance = d.host"
                               " AND h.lease_until > now() - interval '3 days'))) ORDER BY q.queued "
                               "DESC, q.user_id"
                               " LIMIT " ATTENTION_LIMIT,
    0};
#define PCT(p, col)                                                                                \
    "round((percentile_cont(" p ") WITHIN GROUP (ORDER BY extract(epoch FROM " col                 \
    " - triaged_at) * 1000))::numeric, 1)"
static const struct db_stmt st_deliveries = {
    "deck_deliveries",
    "SELECT count(*), count(*) FILTER (WHERE status = 'queued'),"
    " count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status = 'acked'),"
    " count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'expired'),"
    " " PCT("0.5", "first_delivered_at") ", " PCT(
        "0.95",
        "first_delivered_at") ","
                              " " PCT("0.5", "acked_at") ", " PCT(
                                  "0.95",
                                  "acked_at") " FROM proposals"
                                              " WHERE triaged_at > now() - interval '24 hours'",
    0};
static const struct db_stmt st_lessons = {
    "deck_lessons",
    "SELECT lesson_type, count(*) FROM lessons WHERE created_at > now() - interval '24 hours'"
    " GROUP BY lesson_type ORDER BY count(*) DESC, lesson_type",
    0};

enum { Q_GRID, Q_RISK, Q_CAP, Q_UNREACHED, Q_DELIVERIES, Q_LESSONS, Q_COUNT };

static json_t *num_or_null(const PGresult *r, int row, int col)
{
    return sql_isnull(r, row, col) ? json_null() : json_real(sql_dbl(r, row, col));
}

static json_t *attention_list(const PGresult *r)
{
    json_t *a = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(
            a, json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "user_id", PQgetvalue(r, i, 0), "phase",
                         PQgetvalue(r, i, 1), "risk_level", PQgetvalue(r, i, 2), "daily_msg_cap",
                         (json_int_t)sql_ll(r, i, 3), "daily_msg_count",
                         (json_int_t)sql_ll(r, i, 4), "last_updated", PQgetvalue(r, i, 5)));
    return a;
}

static json_t *overview_json(PGresult *const *res)
{
    json_t *grid = json_array();
    long long total = 0;
    for (int i = 0; i < PQntuples(res[Q_GRID]); i++) {
        long long n = sql_ll(res[Q_GRID], i, 2);
        total += n;
        json_array_append_new(
            grid, json_pack("{s:s, s:s, s:I}", "phase", PQgetvalue(res[Q_GRID], i, 0), "risk_level",
                            PQgetvalue(res[Q_GRID], i, 1), "count", (json_int_t)n));
    }
    json_t *unreached = json_array();
    const PGresult *u = res[Q_UNREACHED];
    for (int i = 0; i < PQntuples(u); i++)
        json_array_append_new(unreached,
                              json_pack("{s:s, s:I, s:o}", "user_id", PQgetvalue(u, i, 0), "queued",
                                        (json_int_t)sql_ll(u, i, 1), "last_seen_at",
                                        sql_json_str(u, i, 2)));
    const PGresult *dl = res[Q_DELIVERIES];
    json_t *deliveries = json_pack(
        "{s:i, s:{s:I, s:I, s:I, s:I, s:I, s:I}, s:{s:o, s:o}, s:{s:o, s:o}}", "window_s", 86400,
        "counts", "total", (json_int_t)sql_ll(dl, 0, 0), "queued", (json_int_t)sql_ll(dl, 0, 1),
        "delivered", (json_int_t)sql_ll(dl, 0, 2), "acked", (json_int_t)sql_ll(dl, 0, 3), "failed",
        (json_int_t)sql_ll(dl, 0, 4), "expired", (json_int_t)sql_ll(dl, 0, 5), "first_delivery_ms",
        "p50", num_or_null(dl, 0, 6), "p95", num_or_null(dl, 0, 7), "ack_ms", "p50",
        num_or_null(dl, 0, 8), "p95", num_or_null(dl, 0, 9));
    json_t *lessons = json_array();
    const PGresult *l = res[Q_LESSONS];
    for (int i = 0; i < PQntuples(l); i++)
        json_array_append_new(lessons, json_pack("{s:s, s:I}", "lesson_type", PQgetvalue(l, i, 0),
                                                 "count", (json_int_t)sql_ll(l, i, 1)));
    return json_pack("{s:{s:I, s:o}, s:{s:o, s:o, s:o}, s:o, s:{s:i, s:o}}", "bonds", "total",
                     (json_int_t)total, "grid", grid, "needs_attention", "at_risk",
                     attention_list(res[Q_RISK]), "at_cap", attention_list(res[Q_CAP]), "unreached",
                     unreached, "deliveries", deliveries, "lessons", "window_s", 86400, "by_type",
                     lessons);
}

struct overview_args {
    json_t *out;
};

static int overview_fn(struct pool_conn *c, void *arg)
{
    struct overview_args *a = arg;
    static const struct db_stmt *const sts[Q_COUNT] = {&st_grid,      &st_at_risk,    &st_at_cap,
                                                       &st_unreached, &st_deliveries, &st_lessons};
    const char *const *params[Q_COUNT] = {NULL};
    PGresult *res[Q_COUNT] = {NULL};
    pool_exec_batch(c, Q_COUNT, sts, params, res);
    int rc = ST_OK;
    for (int i = 0; i < Q_COUNT && rc == ST_OK; i++)
        rc = pool_result_err(c, res[i]);
    if (rc == ST_OK && PQntuples(res[Q_DELIVERIES]) != 1)
        rc = ST_EINTERNAL;
    if (rc == ST_OK && !(a->out = overview_json(res)))
        rc = ST_ENOMEM;
    for (int i = 0; i < Q_COUNT; i++)
        PQclear(res[i]);
    return rc;
}

/* A copy of the cached overview when it is fresh: ST_OK, or ST_ENOTFOUND. */
static int cached(struct deck *d, char **json, size_t *len)
{
    int rc = ST_ENOTFOUND;
    pthread_mutex_lock(&d->mu);
    if (d->overview && clock_now_us() - d->overview_at_us < DECK_OVERVIEW_TTL_US) {
        *json = malloc(d->overview_len + 1);
        if (*json) {
            memcpy(*json, d->overview, d->overview_len + 1);
            *len = d->overview_len;
            rc = ST_OK;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
}

int deck_overview(struct deck *d, char **json, size_t *len)
{
    if (cached(d, json, len) == ST_OK)
        return ST_OK;
    struct overview_args a = {NULL};
    int rc = pool_with(d->pool, overview_fn, &a);
    if (rc != ST_OK)
        return rc;
    *json = json_dumps(a.out, JSON_COMPACT);
    json_decref(a.out);
    if (!*json)
        return ST_ENOMEM;
    *len = strlen(*json);
    char *keep = strdup(*json);
    if (keep) {
        pthread_mutex_lock(&d->mu);
        free(d->overview);
        d->overview = keep;
        d->overview_len = *len;
        d->overview_at_us = clock_now_us();
        pthread_mutex_unlock(&d->mu);
    }
    return ST_OK;
}
