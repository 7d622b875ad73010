/* Scouts, devices and proposals: the logic and every SQL statement (docs/api.md). No
 * transport here: the HTTP and WebSocket adapters call these functions. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scouts_int.h"
#include "scouts_notify.h"
#include "steward/audit.h"
#include "steward/crypto.h"
#include "steward/cursor.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/lessons.h"
#include "steward/sql.h"

#define SCOUT_COLS                                                                         \
    "id, user_id, provider, enabled, auto_trash_spam, device_inactivity_pause_days, "      \
    SQL_US("created_at") ", " SQL_US("updated_at") ", " SQL_US("last_run_at")              \
    ", run_cursor, seq"

#define PROPOSAL_COLS                                                                      \
    "id, scout_id, user_id, source_type, source_msg_ref, reason, raw_subject, raw_snippet, " \
    "status, delivery_attempts, " SQL_US("triaged_at") ", " SQL_US("expires_at") ", "        \
    SQL_US("delivered_at") ", " SQL_US("acked_at") ", " SQL_US("failed_at") ", "            \
    SQL_US("expired_at") ", seq, triage_verdict"

#define DEVICE_COLS                                                                        \
    "id, user_id, name, " SQL_US("created_at") ", " SQL_US("last_seen_at") ", "            \
    "(coalesce(connected_until > now(), false) OR EXISTS (SELECT 1 FROM device_hosts h "      \
    "WHERE h.instance = devices.host AND h.lease_until > now())), seq"

static const struct db_stmt st_scout_insert = {
    "scouts_scout_insert",
    "INSERT INTO scouts (user_id, provider, enabled, auto_trash_spam, "
    "device_inactivity_pause_days) VALUES ($1, $2, $3::bool, $4::bool, $5::int) "
    "RETURNING " SCOUT_COLS,
    5};

static const struct db_stmt st_scout_get = {
    "scouts_scout_get", "SELECT " SCOUT_COLS " FROM scouts WHERE id = $1::uuid", 1};

static const struct db_stmt st_scout_patch = {
    "scouts_scout_patch",
    "UPDATE scouts SET provider = coalesce($2, provider), "
    "enabled = coalesce($3::bool, enabled), "
    "auto_trash_spam = coalesce($4::bool, auto_trash_spam), "
    "device_inactivity_pause_days = coalesce($5::int, device_inactivity_pause_days), "
    "updated_at = now() WHERE id = $1::uuid RETURNING " SCOUT_COLS,
    5};

static const struct db_stmt st_scout_delete = {
    "scouts_scout_delete", "DELETE FROM scouts WHERE id = $1::uuid RETURNING user_id", 1};

/* Ingest in one round trip (migrations/0007_scouts_ingest.sql, its notification sent
 * through steward_notify since 0009_notify.sql): scout check, spam, pause rule,
 * idempotent insert and the q notification, in one autocommitted statement. */
static const struct db_stmt st_ingest = {
    "scouts_ingest",
    "SELECT outcome, proposal_id, archive FROM scouts_ingest($1::uuid, $2, $3::bool, $4, $5, "
    "$6, $7, $8::int)",
    8};

/* Scout lists, newest first: one statement per combination of filters so each can use
 * its index ($1 = created_at bound, $2 = seq bound, $3 = limit, $4 = user_id, $5 =
 * enabled; unused ones are only typed). */
#define SCOUTS_LIST_SQL(f)                                                                  \
    "SELECT " SCOUT_COLS " FROM scouts WHERE (created_at, seq) < ($1::timestamptz, $2::int8)" \
    f " ORDER BY created_at DESC, seq DESC LIMIT $3::int"
static const struct db_stmt st_scouts_list[4] = {
    {"scouts_list_all", SCOUTS_LIST_SQL(" AND $4::text IS NULL AND $5::bool IS NULL"), 5},
    {"scouts_list_user", SCOUTS_LIST_SQL(" AND user_id = $4 AND $5::bool IS NULL"), 5},
    {"scouts_list_enabled", SCOUTS_LIST_SQL(" AND $4::text IS NULL AND enabled = $5::bool"), 5},
    {"scouts_list_user_enabled", SCOUTS_LIST_SQL(" AND user_id = $4 AND enabled = $5::bool"), 5},
};

/* A worker's run: $2 = the cursor, kept as it was when $3 is false. */
static const struct db_stmt st_scout_run = {
    "scouts_scout_run",
    "UPDATE scouts SET last_run_at = now(), "
    "run_cursor = CASE WHEN $3::bool THEN $2 ELSE run_cursor END "
    "WHERE id = $1::uuid RETURNING " SCOUT_COLS,
    3};

/* Batch ingest in one statement (migrations/0011_triage.sql): every item through
 * scouts_ingest, in input order, with the scout's row held meanwhile. */
static const struct db_stmt st_ingest_batch = {
    "scouts_ingest_batch",
    "SELECT ord, outcome, proposal_id, archive FROM scouts_ingest_batch($1::uuid, $2::json, "
    "$3::int)",
    3};

static const struct db_stmt st_proposals_all = {
    "scouts_proposals_all",
    "SELECT " PROPOSAL_COLS " FROM proposals WHERE user_id = $1 "
    "AND (triaged_at, seq) < ($2::timestamptz, $3::int8) "
    "ORDER BY triaged_at DESC, seq DESC LIMIT $4::int",
    4};

static const struct db_stmt st_proposals_status = {
    "scouts_proposals_status",
    "SELECT " PROPOSAL_COLS " FROM proposals WHERE user_id = $1 AND status = $5 "
    "AND (triaged_at, seq) < ($2::timestamptz, $3::int8) "
    "ORDER BY triaged_at DESC, seq DESC LIMIT $4::int",
    5};

static const struct db_stmt st_device_insert = {
    "scouts_device_insert",
    "INSERT INTO devices (user_id, name, token_hash) VALUES ($1, $2, $3) "
    "RETURNING id, " SQL_US("created_at"),
    3};

static const struct db_stmt st_devices_list = {
    "scouts_devices_list",
    "SELECT " DEVICE_COLS " FROM devices WHERE user_id = $1 "
    "AND (created_at, seq) < ($2::timestamptz, $3::int8) "
    "ORDER BY created_at DESC, seq DESC LIMIT $4::int",
    4};

static const struct db_stmt st_device_delete = {
    "scouts_device_delete",
    "WITH d AS (DELETE FROM devices WHERE id = $1::uuid RETURNING id, user_id) "
    "SELECT d.user_id, steward_notify(" SCOUTS_NOTIFY_SQL_DEVICE_GONE ", d.id::text, d.user_id) "
    "FROM d",
    1};

/* A device_hello: the token is checked and, when it matches, the device is marked seen
 * and held by this instance ($3: host, online while this instance's lease runs), in one
 * round trip (the device is present by the time hello_ok goes out, and a wrong token
 * writes nothing). It returns the last_seen_at it wrote, which the close compares (see
 * st_devices_offline). The database compares SHA-256 digests: how long that takes tells
 * at most how much of the digest of the caller's own guess matches, which brings no one
 * closer to a token. */
static const struct db_stmt st_device_hello = {
    "scouts_device_hello",
    "UPDATE devices SET last_seen_at = now(), host = $3 "
    "WHERE id = $1::uuid AND token_hash = $2 RETURNING user_id, " SQL_US("last_seen_at"),
    3};

/* The last local sockets of a group of devices closed ($2 the ids, $3 the last_seen_at
 * each one's latest hello here wrote, in microseconds): each is released where this
 * instance ($1) still holds it and no hello came since (anywhere: every hello writes
 * last_seen_at), so a device that reconnected here or elsewhere meanwhile stays online.
 * A live connected_until means an instance of the previous version holds it too (rolling
 * upgrade): released then as well, since that keeps it online. */
static const struct db_stmt st_devices_offline = {
    "scouts_devices_offline",
    "UPDATE devices d SET host = NULL, last_seen_at = now() "
    "FROM unnest($2::uuid[], $3::int8[]) AS x(id, seen) "
    "WHERE d.id = x.id AND d.host = $1 "
    "AND (" SQL_US("d.last_seen_at") " = x.seen OR d.connected_until > now())",
    3};

/* Shutdown: every device held here is released and the lease row goes. */
static const struct db_stmt st_hosts_release = {
    "scouts_hosts_release",
    "WITH l AS (DELETE FROM device_hosts WHERE instance = $1) "
    "UPDATE devices SET host = NULL, last_seen_at = now() WHERE host = $1",
    1};

/* The presence tick: this instance's lease renewed to now() + $2 s, in the same statement
 * as the prune of instances whose lease lapsed a day ago (a crash; a table of a few rows,
 * so the scan is cheap): their devices are released, their lease's end kept as the
 * devices' last sighting. */
static const struct db_stmt st_lease_renew = {
    "scouts_lease_renew",
    "WITH p AS (DELETE FROM device_hosts WHERE lease_until < now() - interval '1 day' "
    "AND instance <> $1 RETURNING instance, lease_until), "
    "c AS (UPDATE devices d SET host = NULL, "
    "last_seen_at = greatest(d.last_seen_at, p.lease_until) FROM p WHERE d.host = p.instance) "
    "INSERT INTO device_hosts (instance, lease_until) "
    "VALUES ($1, now() + make_interval(secs => $2::int)) "
    "ON CONFLICT (instance) DO UPDATE SET lease_until = EXCLUDED.lease_until",
    2};

/* Which of the ids ($1) no longer name a device (read-only). */
static const struct db_stmt st_devices_gone = {
    "scouts_devices_gone",
    "SELECT x FROM unnest($1::uuid[]) AS x WHERE NOT EXISTS (SELECT 1 FROM devices d "
    "WHERE d.id = x)",
    1};

/* One delivery pass for a user's sessions on this instance, fetch and mark in one
 * statement. c: the first $2 (the in-flight window) pending proposals of the user, oldest
 * first. $3 is a JSON array with one element per session: the ids that session has in
 * flight. Per session (s.si, 1-based), the rules of docs/protocol.md: a proposal it
 * already has goes out again only when the ack-timeout sweep queued it again; the others
 * go out oldest first while its window has room (room = window - how many of c it has).
 * upd marks what any session is sent delivered; a row acked or expired meanwhile fails
 * the recheck of the UPDATE (it waits for the concurrent writer and rereads the row) and
 * goes nowhere. Every row of c comes back (so the caller drops ids no longer pending from
 * the windows) with the comma-separated sessions to send it to, NULL for none. */
static const struct db_stmt st_deliver = {
    "scouts_deliver",
    "WITH c AS (SELECT id, scout_id, source_type, source_msg_ref, raw_subject, raw_snippet, "
    "status, triaged_at, expires_at, seq, delivery_attempts FROM proposals "
    "WHERE user_id = $1 AND status IN ('queued', 'delivered') AND expires_at > now() "
    "ORDER BY triaged_at, seq LIMIT $2::int), "
    "r AS (SELECT s.si, c.id, c.status, c.triaged_at, c.seq, s.sent ? c.id::text AS had "
    "FROM (SELECT t.k::int AS si, t.sent FROM jsonb_array_elements($3::jsonb) "
    "WITH ORDINALITY AS t(sent, k)) s CROSS JOIN c), "
    "w AS (SELECT si, id, had, status, "
    "row_number() OVER (PARTITION BY si, had ORDER BY triaged_at, seq) AS k, "
    "$2::int - count(*) FILTER (WHERE had) OVER (PARTITION BY si) AS room FROM r), "
    "pick AS (SELECT si, id FROM w WHERE CASE WHEN had THEN status = 'queued' ELSE k <= room END), "
    "upd AS (UPDATE proposals p SET status = 'delivered', delivered_at = now(), "
    "first_delivered_at = coalesce(p.first_delivered_at, now()), "
    "delivery_attempts = p.delivery_attempts + 1 "
    "WHERE p.id IN (SELECT id FROM pick) AND p.user_id = $1 "
    "AND p.triaged_at <= (SELECT max(triaged_at) FROM c) "
    "AND p.status IN ('queued', 'delivered') AND p.expires_at > now() RETURNING p.id) "
    "SELECT c.id, c.scout_id, c.source_type, c.source_msg_ref, c.raw_subject, c.raw_snippet, "
    "(SELECT string_agg(pick.si::text, ',' ORDER BY pick.si) FROM pick "
    "WHERE pick.id = c.id AND EXISTS (SELECT 1 FROM upd WHERE upd.id = c.id)), "
    SQL_US("c.triaged_at") ", " SQL_US("c.expires_at") ", c.delivery_attempts "
    "FROM c ORDER BY c.triaged_at, c.seq",
    3};

/* The ack and, when it flipped the proposal, the notification other instances act on
 * (a|instance|proposal|device|user, $4 the instance), sent at commit; one autocommitted
 * statement. scouts_ack_notify (migrations/0016_presence_leases.sql) sends it only when
 * another device of the user is held by another instance: only there are sessions to
 * tell (docs/architecture.md). The ids are text parameters, cast to uuid where compared,
 * so that the notification carries the parameters' own text. */
static const struct db_stmt st_ack = {
    "scouts_ack",
    "WITH p AS (SELECT id FROM proposals WHERE id = $1::text::uuid AND user_id = $2::text), "
    "u AS (UPDATE proposals SET status = 'acked', acked_at = now(), "
    "acked_device_id = $3::text::uuid, raw_subject = NULL, raw_snippet = NULL "
    "WHERE id = $1::text::uuid AND user_id = $2::text "
    "AND status IN ('queued', 'delivered', 'failed') RETURNING id), "
    "n AS (SELECT 1 FROM u WHERE scouts_ack_notify($4::text, $1::text, $3::text, $2::text)) "
    "SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
    4};

static const struct db_stmt st_notify_users = {
    "scouts_notify_users",
    "SELECT steward_notify(" SCOUTS_NOTIFY_SQL_QUEUED ", u) "
    "FROM json_array_elements_text($1::json) u",
    1};

static const struct db_stmt st_sweep_fail = {
    "scouts_sweep_fail",
    "UPDATE proposals SET status = 'failed', failed_at = now() "
    "WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => $1::int) "
    "AND delivery_attempts >= $2::int "
    "RETURNING id, user_id, scout_id, delivery_attempts",
    2};

static const struct db_stmt st_sweep_requeue = {
    "scouts_sweep_requeue",
    "WITH r AS (UPDATE proposals SET status = 'queued' "
    "WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => $1::int) "
    "AND delivery_attempts < $2::int RETURNING user_id) "
    "SELECT user_id, count(*) FROM r GROUP BY user_id",
    2};

static const struct db_stmt st_expire = {
    "scouts_expire",
    "WITH e AS (UPDATE proposals SET status = 'expired', expired_at = now(), "
    "raw_subject = NULL, raw_snippet = NULL "
    "WHERE status IN ('queued', 'delivered', 'failed') AND expired_at IS NULL "
    "AND expires_at <= now() RETURNING 1) "
    "SELECT count(*) FROM e",
    0};

static const struct db_stmt st_stats_counts = {
    "scouts_stats_counts",
    "SELECT status, count(*) FROM proposals WHERE triaged_at >= $1::timestamptz "
    "GROUP BY status ORDER BY status",
    1};

static const struct db_stmt st_stats_latency = {
    "scouts_stats_latency",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY "
    "extract(epoch FROM first_delivered_at - triaged_at) * 1000), "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY "
    "extract(epoch FROM first_delivered_at - triaged_at) * 1000), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY "
    "extract(epoch FROM acked_at - delivered_at) * 1000) FILTER (WHERE acked_at IS NOT NULL), "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY "
    "extract(epoch FROM acked_at - delivered_at) * 1000) FILTER (WHERE acked_at IS NOT NULL) "
    "FROM proposals WHERE triaged_at >= $1::timestamptz AND first_delivered_at IS NOT NULL",
    1};

static const struct db_stmt st_erase_proposals = {
    "scouts_erase_proposals",
    "WITH d AS (DELETE FROM proposals WHERE user_id = $1 RETURNING 1) SELECT count(*) FROM d",
    1};
static const struct db_stmt st_erase_devices = {
    "scouts_erase_devices",
    "WITH d AS (DELETE FROM devices WHERE user_id = $1 RETURNING 1) SELECT count(*) FROM d", 1};
static const struct db_stmt st_erase_scouts = {
    "scouts_erase_scouts",
    "WITH d AS (DELETE FROM scouts WHERE user_id = $1 RETURNING 1) SELECT count(*) FROM d", 1};
static const struct db_stmt st_erase_notify = {
    "scouts_erase_notify", "SELECT steward_notify(" SCOUTS_NOTIFY_SQL_USER_ERASED ", $1::text)", 1};

bool scouts_uuid_valid(const char *s)
{
    if (!s || strlen(s) != SCOUTS_ID_LEN)
        return false;
    for (int i = 0; i < SCOUTS_ID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

void scouts_uuid_canon(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'F')
            *s = (char)(*s - 'A' + 'a');
}

/* Runs a statement and maps failure; *out is the result on success (caller clears). */
static int run(struct pool_conn *c, const struct db_stmt *st, const char *const *params,
               PGresult **out)
{
    PGresult *r = pool_exec(c, st, params);
    int rc = pool_result_err(c, r);
    if (rc != ST_OK) {
        PQclear(r);
        *out = NULL;
        return rc;
    }
    *out = r;
    return ST_OK;
}

static int run_discard(struct pool_conn *c, const struct db_stmt *st, const char *const *params)
{
    PGresult *r;
    int rc = run(c, st, params, &r);
    PQclear(r);
    return rc;
}

/* An audit row about user_id's scout or device (the id only in the target). */
static int audit_user_tx(struct pool_conn *c, const char *action, const char *actor,
                         const char *user_id, json_t *detail)
{
    char target[8 + 4 * SCOUTS_USER_MAX + 1];
    snprintf(target, sizeof(target), "user:%s", user_id ? user_id : "");
    return audit_record_tx(c, actor, action, target, detail);
}

/* ---------------------------------------------------------------- scouts */

static json_t *scout_json(const PGresult *r, int i)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", sql_json_str(r, i, 0));
    json_object_set_new(o, "user_id", sql_json_str(r, i, 1));
    json_object_set_new(o, "provider", sql_json_str(r, i, 2));
    json_object_set_new(o, "enabled", json_boolean(sql_bool(r, i, 3)));
    json_object_set_new(o, "auto_trash_spam", json_boolean(sql_bool(r, i, 4)));
    json_object_set_new(o, "device_inactivity_pause_days", json_integer(sql_ll(r, i, 5)));
    json_object_set_new(o, "created_at", sql_json_time(r, i, 6));
    json_object_set_new(o, "updated_at", sql_json_time(r, i, 7));
    json_object_set_new(o, "last_run_at", sql_json_time(r, i, 8));
    json_object_set_new(o, "cursor", sql_json_str(r, i, 9));
    return o;
}

static const char *bool_param(int v)
{
    return v < 0 ? NULL : v ? "true" : "false";
}

struct scout_tx {
    const struct scouts_scout_in *in;
    const char *id;
    const char *actor;
    json_t *out;
    bool set_cursor;        /* a run: the cursor changes */
    const char *run_cursor; /* a run: the new cursor (NULL clears it) */
};

static int scout_create_tx(struct pool_conn *c, void *arg)
{
    struct scout_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    char days[24];
    const char *p[] = {t->in->user_id, t->in->provider,
                       t->in->enabled < 0 ? "true" : bool_param(t->in->enabled),
                       t->in->auto_trash_spam < 0 ? "false" : bool_param(t->in->auto_trash_spam),
                       sql_fmt_ll(days, t->in->pause_days < 0 ? 7 : t->in->pause_days)};
    PGresult *r;
    int rc = run(c, &st_scout_insert, p, &r);
    if (rc != ST_OK)
        return rc;
    t->out = scout_json(r, 0);
    PQclear(r);
    json_t *d = json_pack("{s:O}", "scout_id", json_object_get(t->out, "id"));
    rc = audit_user_tx(c, "scout.create", t->actor, t->in->user_id, d);
    json_decref(d);
    return rc;
}

int scouts_scout_create(struct scouts *s, const struct scouts_scout_in *in, const char *actor,
                        json_t **out)
{
    struct scout_tx t = {in, NULL, actor, NULL, false, NULL};
    int rc = pool_tx(s->pool, scout_create_tx, &t);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    *out = t.out;
    return ST_OK;
}

static int scout_get_fn(struct pool_conn *c, void *arg)
{
    struct scout_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    const char *p[] = {t->id};
    PGresult *r;
    int rc = run(c, &st_scout_get, p, &r);
    if (rc != ST_OK)
        return rc;
    if (PQntuples(r) == 1)
        t->out = scout_json(r, 0);
    PQclear(r);
    return t->out ? ST_OK : ST_ENOTFOUND;
}

int scouts_scout_get(struct scouts *s, const char *id, json_t **out)
{
    if (!scouts_uuid_valid(id))
        return ST_ENOTFOUND;
    struct scout_tx t = {NULL, id, NULL, NULL, false, NULL};
    int rc = pool_with(s->pool, scout_get_fn, &t);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    *out = t.out;
    return ST_OK;
}

static int scout_patch_tx(struct pool_conn *c, void *arg)
{
    struct scout_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    char days[24];
    const char *p[] = {t->id, t->in->provider, bool_param(t->in->enabled),
                       bool_param(t->in->auto_trash_spam),
                       t->in->pause_days < 0 ? NULL : sql_fmt_ll(days, t->in->pause_days)};
    PGresult *r;
    int rc = run(c, &st_scout_patch, p, &r);
    if (rc != ST_OK)
        return rc;
    if (PQntuples(r) == 1)
        t->out = scout_json(r, 0);
    PQclear(r);
    if (!t->out)
        return ST_ENOTFOUND;
    json_t *d = json_pack("{s:s}", "scout_id", t->id);
    rc = audit_user_tx(c, "scout.update", t->actor,
                       json_string_value(json_object_get(t->out, "user_id")), d);
    json_decref(d);
    return rc;
}

int scouts_scout_patch(struct scouts *s, const char *id, const struct scouts_scout_in *in,
                       const char *actor, json_t **out)
{
    if (!scouts_uuid_valid(id))
        return ST_ENOTFOUND;
    struct scout_tx t = {in, id, actor, NULL, false, NULL};
    int rc = pool_tx(s->pool, scout_patch_tx, &t);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    *out = t.out;
    return ST_OK;
}

static int scout_delete_tx(struct pool_conn *c, void *arg)
{
    struct scout_tx *t = arg;
    const char *p[] = {t->id};
    PGresult *r;
    int rc = run(c, &st_scout_delete, p, &r);
    if (rc != ST_OK)
        return rc;
    int n = PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return ST_ENOTFOUND;
    }
    json_t *d = json_pack("{s:s}", "scout_id", t->id);
    rc = audit_user_tx(c, "scout.delete", t->actor, sql_str(r, 0, 0), d);
    json_decref(d);
    PQclear(r);
    return rc;
}

int scouts_scout_delete(struct scouts *s, const char *id, const char *actor)
{
    if (!scouts_uuid_valid(id))
        return ST_ENOTFOUND;
    struct scout_tx t = {NULL, id, actor, NULL, false, NULL};
    return pool_tx(s->pool, scout_delete_tx, &t);
}

/* ---------------------------------------------------------------- ingest */

/* The answer to one item from the (outcome, proposal_id, archive) columns at col of row
 * i, as the single route gives it: *status 201 or 200 and the body; NULL with *status 0
 * for not_found, disabled and conflict (the caller decides), NULL with *status set when
 * out of memory. */
static json_t *item_result(const PGresult *r, int i, int col, int *status)
{
    const char *outcome = sql_str(r, i, col);
    *status = 200;
    if (strcmp(outcome, "queued") == 0) {
        *status = 201;
        return json_pack("{s:b, s:s}", "queued", 1, "proposal_id", sql_str(r, i, col + 1));
    }
    if (strcmp(outcome, "duplicate") == 0)
        return json_pack("{s:b, s:s, s:s}", "queued", 0, "reason", "duplicate", "proposal_id",
                         sql_str(r, i, col + 1));
    if (strcmp(outcome, "spam") == 0)
        return json_pack("{s:b, s:s, s:b}", "queued", 0, "reason", "spam", "archive",
                         sql_bool(r, i, col + 2));
    if (strcmp(outcome, "paused") == 0)
        return json_pack("{s:b, s:s}", "queued", 0, "reason", "paused_device_inactive");
    *status = 0;
    return NULL;
}

struct ingest_arg {
    struct scouts *s;
    const char *scout_id;
    const struct scouts_item_in *in;
    int status;
    json_t *out;
};

static int ingest_fn(struct pool_conn *c, void *arg)
{
    struct ingest_arg *t = arg;
    json_decref(t->out);
    t->out = NULL;
    t->status = 0;
    char ttl[24];
    const char *p[] = {t->scout_id,
                       t->in->source_msg_ref,
                       t->in->spam ? "true" : "false",
                       t->in->source_type,
                       t->in->reason,
                       t->in->subject,
                       t->in->snippet,
                       sql_fmt_ll(ttl, t->s->set.proposal_ttl_days)};
    PGresult *r;
    int rc = run(c, &st_ingest, p, &r);
    if (rc != ST_OK)
        return rc;
    const char *outcome = sql_str(r, 0, 0);
    t->out = item_result(r, 0, 0, &t->status);
    if (!t->out && t->status)
        rc = ST_ENOMEM;
    else if (!t->out)
        /* disabled, or the item collided with a proposal that was gone again */
        rc = strcmp(outcome, "not_found") == 0 ? ST_ENOTFOUND : ST_ECONFLICT;
    PQclear(r);
    return rc;
}

int scouts_ingest(struct scouts *s, const char *scout_id, const struct scouts_item_in *in,
                  int *status, json_t **out)
{
    if (!scouts_uuid_valid(scout_id))
        return ST_ENOTFOUND;
    struct ingest_arg t = {s, scout_id, in, 0, NULL};
    int rc = pool_with(s->pool, ingest_fn, &t);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    if (t.status == 201)
        metrics_count(s->metrics, MC_PROPOSALS_QUEUED, 1);
    *status = t.status;
    *out = t.out;
    return ST_OK;
}

/* The items as the JSON array scouts_ingest_batch reads (malloc'd text), or NULL. */
static char *batch_items_json(const struct scouts_item_in *items, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        const struct scouts_item_in *it = &items[i];
        json_t *o = json_pack("{s:s, s:b}", "source_msg_ref", it->source_msg_ref, "spam",
                              it->spam);
        if (!o) {
            json_decref(arr);
            return NULL;
        }
        const char *opt[][2] = {{"source_type", it->source_type},
                                {"reason", it->reason},
                                {"subject", it->subject},
                                {"snippet", it->snippet}};
        for (size_t k = 0; k < 4; k++)
            if (opt[k][1])
                json_object_set_new(o, opt[k][0], json_string(opt[k][1]));
        json_array_append_new(arr, o);
    }
    char *text = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return text;
}

struct batch_arg {
    struct scouts *s;
    const char *scout_id;
    const char *items;
    size_t n;
    long long queued;
    json_t *out;
};

static int batch_fn(struct pool_conn *c, void *arg)
{
    struct batch_arg *t = arg;
    json_decref(t->out);
    t->out = NULL;
    t->queued = 0;
    char ttl[24];
    const char *p[] = {t->scout_id, t->items, sql_fmt_ll(ttl, t->s->set.proposal_ttl_days)};
    PGresult *r;
    int rc = run(c, &st_ingest_batch, p, &r);
    if (rc != ST_OK)
        return rc;
    int n = PQntuples(r);
    if (n == 1 && sql_ll(r, 0, 0) == 0 &&
        (strcmp(sql_str(r, 0, 1), "not_found") == 0 || strcmp(sql_str(r, 0, 1), "disabled") == 0)) {
        rc = strcmp(sql_str(r, 0, 1), "not_found") == 0 ? ST_ENOTFOUND : ST_ECONFLICT;
        PQclear(r);
        return rc;
    }
    /* rows come in the order the items were written; each names its input index */
    json_t *results = (size_t)n == t->n ? json_array() : NULL;
    for (size_t i = 0; results && i < t->n; i++)
        json_array_append_new(results, json_null());
    if (!results)
        rc = (size_t)n == t->n ? ST_ENOMEM : ST_EINTERNAL;
    for (int i = 0; results && i < n && rc == ST_OK; i++) {
        long long ord = sql_ll(r, i, 0);
        if (ord < 0 || (size_t)ord >= t->n || !json_is_null(json_array_get(results, (size_t)ord))) {
            rc = ST_EINTERNAL; /* the function answers every item once */
            break;
        }
        int status;
        json_t *o = item_result(r, i, 1, &status);
        if (!o && !status) /* an item that collided with a proposal gone again */
            o = json_pack("{s:b, s:s}", "queued", 0, "reason", "conflict"), status = 409;
        json_t *item = o ? json_pack("{s:i}", "status", status) : NULL; /* status first */
        if (!item || json_object_update(item, o) != 0) {
            json_decref(o);
            json_decref(item);
            rc = ST_ENOMEM;
            break;
        }
        json_decref(o);
        t->queued += status == 201;
        json_array_set_new(results, (size_t)ord, item);
    }
    PQclear(r);
    if (rc != ST_OK) {
        json_decref(results);
        return rc;
    }
    t->out = json_pack("{s:o, s:I}", "results", results, "queued", (json_int_t)t->queued);
    return t->out ? ST_OK : ST_ENOMEM;
}

int scouts_ingest_batch(struct scouts *s, const char *scout_id, const struct scouts_item_in *items,
                        size_t n, json_t **out)
{
    if (!scouts_uuid_valid(scout_id))
        return ST_ENOTFOUND;
    char *text = batch_items_json(items, n);
    if (!text)
        return ST_ENOMEM;
    struct batch_arg t = {s, scout_id, text, n, 0, NULL};
    int rc = pool_with(s->pool, batch_fn, &t);
    free(text);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    metrics_count(s->metrics, MC_PROPOSALS_QUEUED, (uint64_t)t.queued);
    *out = t.out;
    return ST_OK;
}

/* ---------------------------------------------------------------- runs */

static int scout_run_fn(struct pool_conn *c, void *arg)
{
    struct scout_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    const char *p[] = {t->id, t->run_cursor, t->set_cursor ? "true" : "false"};
    PGresult *r;
    int rc = run(c, &st_scout_run, p, &r);
    if (rc != ST_OK)
        return rc;
    if (PQntuples(r) == 1)
        t->out = scout_json(r, 0);
    PQclear(r);
    return t->out ? ST_OK : ST_ENOTFOUND;
}

int scouts_scout_run(struct scouts *s, const char *id, bool set_cursor, const char *cursor,
                     json_t **out)
{
    if (!scouts_uuid_valid(id))
        return ST_ENOTFOUND;
    struct scout_tx t = {NULL, id, NULL, NULL, set_cursor, cursor};
    int rc = pool_with(s->pool, scout_run_fn, &t);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    *out = t.out;
    return ST_OK;
}

/* ---------------------------------------------------------------- lists */

static json_t *proposal_json(const PGresult *r, int i)
{
    static const char *const names[] = {"id", "scout_id", "user_id", "source_type",
                                        "source_msg_ref", "reason", "raw_subject",
                                        "raw_snippet", "status"};
    json_t *o = json_object();
    for (int k = 0; k < 9; k++)
        json_object_set_new(o, names[k], sql_json_str(r, i, k));
    json_object_set_new(o, "delivery_attempts", json_integer(sql_ll(r, i, 9)));
    json_object_set_new(o, "triage_verdict", sql_json_str(r, i, 17));
    json_object_set_new(o, "triage_reason", sql_json_str(r, i, 5));
    static const char *const times[] = {"triaged_at", "expires_at", "delivered_at",
                                        "acked_at",   "failed_at",  "expired_at"};
    for (int k = 0; k < 6; k++)
        json_object_set_new(o, times[k], sql_json_time(r, i, 10 + k));
    return o;
}

struct list_tx {
    const struct db_stmt *st;
    const char *const *params;
    int limit;
    json_t *(*row)(const PGresult *r, int i);
    int ts_col, seq_col;
    json_t *out;
};

static int list_fn(struct pool_conn *c, void *arg)
{
    struct list_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    PGresult *r;
    int rc = run(c, t->st, t->params, &r);
    if (rc != ST_OK)
        return rc;
    json_t *items = json_array();
    int n = PQntuples(r);
    int shown = n > t->limit ? t->limit : n;
    for (int i = 0; i < shown; i++)
        json_array_append_new(items, t->row(r, i));
    json_t *next = json_null();
    if (n > t->limit) {
        char cur[CURSOR_LEN];
        cursor_encode(cur, sql_ll(r, shown - 1, t->ts_col), sql_ll(r, shown - 1, t->seq_col));
        json_decref(next);
        next = json_string(cur);
    }
    PQclear(r);
    t->out = json_pack("{s:o, s:o}", "items", items, "next_cursor", next);
    return ST_OK;
}

static int run_list(struct scouts *s, struct list_tx *t, json_t **out)
{
    int rc = pool_with(s->pool, list_fn, t);
    if (rc != ST_OK) {
        json_decref(t->out);
        return rc;
    }
    *out = t->out;
    return ST_OK;
}

int scouts_proposals_list(struct scouts *s, const char *user_id, const char *status, int limit,
                          int64_t cur_a, int64_t cur_b, bool has_cursor, json_t **out)
{
    char ts[32], seq[24], lim[24];
    const char *p[] = {user_id, has_cursor ? sql_fmt_time(ts, cur_a) : "infinity",
                       sql_fmt_ll(seq, has_cursor ? cur_b : 0), sql_fmt_ll(lim, limit + 1),
                       status};
    struct list_tx t = {status ? &st_proposals_status : &st_proposals_all, p, limit,
                        proposal_json, 10, 16, NULL};
    return run_list(s, &t, out);
}

int scouts_scouts_list(struct scouts *s, const char *user_id, int enabled, int limit,
                       int64_t cur_a, int64_t cur_b, bool has_cursor, json_t **out)
{
    char ts[32], seq[24], lim[24];
    const char *p[] = {has_cursor ? sql_fmt_time(ts, cur_a) : "infinity",
                       sql_fmt_ll(seq, has_cursor ? cur_b : 0), sql_fmt_ll(lim, limit + 1),
                       user_id, enabled < 0 ? NULL : enabled ? "true" : "false"};
    int variant = (user_id ? 1 : 0) | (enabled >= 0 ? 2 : 0);
    struct list_tx t = {&st_scouts_list[variant], p, limit, scout_json, 6, 10, NULL};
    return run_list(s, &t, out);
}

/* ---------------------------------------------------------------- devices */

static json_t *device_json(const PGresult *r, int i)
{
    json_t *o = json_object();
    json_object_set_new(o, "device_id", sql_json_str(r, i, 0));
    json_object_set_new(o, "user_id", sql_json_str(r, i, 1));
    json_object_set_new(o, "name", sql_json_str(r, i, 2));
    json_object_set_new(o, "created_at", sql_json_time(r, i, 3));
    json_object_set_new(o, "last_seen_at", sql_json_time(r, i, 4));
    json_object_set_new(o, "online", json_boolean(sql_bool(r, i, 5)));
    return o;
}

int scouts_devices_list(struct scouts *s, const char *user_id, int limit, int64_t cur_a,
                        int64_t cur_b, bool has_cursor, json_t **out)
{
    char ts[32], seq[24], lim[24];
    const char *p[] = {user_id, has_cursor ? sql_fmt_time(ts, cur_a) : "infinity",
                       sql_fmt_ll(seq, has_cursor ? cur_b : 0), sql_fmt_ll(lim, limit + 1)};
    struct list_tx t = {&st_devices_list, p, limit, device_json, 3, 6, NULL};
    return run_list(s, &t, out);
}

struct device_tx {
    const char *user_id, *name, *hash, *id, *actor;
    json_t *out;
};

static int device_create_tx(struct pool_conn *c, void *arg)
{
    struct device_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    const char *p[] = {t->user_id, t->name, t->hash};
    PGresult *r;
    int rc = run(c, &st_device_insert, p, &r);
    if (rc != ST_OK)
        return rc;
    t->out = json_pack("{s:o, s:s, s:s, s:o}", "device_id", sql_json_str(r, 0, 0), "user_id",
                       t->user_id, "name", t->name, "created_at", sql_json_time(r, 0, 1));
    PQclear(r);
    json_t *d = json_pack("{s:O}", "device_id", json_object_get(t->out, "device_id"));
    rc = audit_user_tx(c, "device.create", t->actor, t->user_id, d);
    json_decref(d);
    return rc;
}

int scouts_device_create(struct scouts *s, const char *user_id, const char *name,
                         const char *actor, json_t **out)
{
    char token[80], hash[65];
    if (crypto_token(token, sizeof(token), "dev_", 32) != 0)
        return ST_EINTERNAL;
    crypto_sha256_hex(token, strlen(token), hash);
    struct device_tx t = {user_id, name, hash, NULL, actor, NULL};
    int rc = pool_tx(s->pool, device_create_tx, &t);
    if (rc != ST_OK) {
        json_decref(t.out);
        return rc;
    }
    json_object_set_new(t.out, "token", json_string(token));
    *out = t.out;
    return ST_OK;
}

static int device_delete_tx(struct pool_conn *c, void *arg)
{
    struct device_tx *t = arg;
    const char *p[] = {t->id};
    PGresult *r;
    int rc = run(c, &st_device_delete, p, &r);
    if (rc != ST_OK)
        return rc;
    int n = PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return ST_ENOTFOUND;
    }
    json_t *d = json_pack("{s:s}", "device_id", t->id);
    rc = audit_user_tx(c, "device.delete", t->actor, sql_str(r, 0, 0), d);
    json_decref(d);
    PQclear(r);
    return rc;
}

int scouts_device_delete(struct scouts *s, const char *id, const char *actor)
{
    if (!scouts_uuid_valid(id))
        return ST_ENOTFOUND;
    struct device_tx t = {NULL, NULL, NULL, id, actor, NULL};
    return pool_tx(s->pool, device_delete_tx, &t);
}

static int presence_period_s(const struct scouts *s)
{
    return s->set.ws_heartbeat_s * 2 + 10;
}

struct hello_arg {
    const char *params[3];
    char *user;
    size_t ucap;
    long long seen;
    bool ok;
};

static int hello_fn(struct pool_conn *c, void *arg)
{
    struct hello_arg *h = arg;
    PGresult *r;
    int rc = run(c, &st_device_hello, h->params, &r);
    if (rc != ST_OK)
        return rc;
    h->ok = PQntuples(r) == 1;
    if (h->ok) {
        snprintf(h->user, h->ucap, "%s", sql_str(r, 0, 0));
        h->seen = sql_ll(r, 0, 1);
    }
    PQclear(r);
    return ST_OK;
}

int scouts_device_hello(struct scouts *s, const char *device_id, const char *token, char *user,
                        size_t ucap, long long *seen)
{
    if (!scouts_uuid_valid(device_id))
        return ST_ENOTFOUND;
    char hash[65];
    crypto_sha256_hex(token, strlen(token), hash);
    struct hello_arg h = {{device_id, hash, s->instance}, user, ucap, 0, false};
    int rc = pool_with(s->pool, hello_fn, &h);
    if (rc != ST_OK)
        return rc;
    *seen = h.seen;
    return h.ok ? ST_OK : ST_ENOTFOUND;
}

struct one_arg {
    const struct db_stmt *st;
    const char *const *params;
};

static int one_fn(struct pool_conn *c, void *arg)
{
    struct one_arg *o = arg;
    return run_discard(c, o->st, o->params);
}

int scouts_devices_offline(struct scouts *s, const char *ids, const char *seen)
{
    const char *p[] = {s->instance, ids, seen};
    struct one_arg o = {&st_devices_offline, p};
    return pool_with(s->pool, one_fn, &o);
}

int scouts_hosts_release(struct scouts *s)
{
    const char *p[] = {s->instance};
    struct one_arg o = {&st_hosts_release, p};
    return pool_with(s->pool, one_fn, &o);
}

int scouts_lease_renew(struct scouts *s)
{
    char secs[24];
    const char *p[] = {s->instance, sql_fmt_ll(secs, presence_period_s(s))};
    struct one_arg o = {&st_lease_renew, p};
    int rc = pool_with(s->pool, one_fn, &o);
    if (rc == ST_OK)
        atomic_store(&s->lease_renewed, true);
    return rc;
}

struct gone_arg {
    const char *const *params;
    json_t *gone;
};

static int gone_fn(struct pool_conn *c, void *arg)
{
    struct gone_arg *a = arg;
    json_decref(a->gone);
    a->gone = NULL;
    PGresult *r;
    int rc = run(c, &st_devices_gone, a->params, &r);
    if (rc != ST_OK)
        return rc;
    a->gone = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(a->gone, sql_json_str(r, i, 0));
    PQclear(r);
    return ST_OK;
}

int scouts_devices_gone(struct scouts *s, const char *ids, json_t **gone)
{
    const char *p[] = {ids};
    struct gone_arg a = {p, NULL};
    int rc = pool_with(s->pool, gone_fn, &a);
    if (rc != ST_OK) {
        json_decref(a.gone);
        return rc;
    }
    *gone = a.gone;
    return ST_OK;
}

/* ---------------------------------------------------------------- delivery */

void scouts_pending_free(struct scouts_pending *rows, size_t n)
{
    if (!rows)
        return;
    for (size_t i = 0; i < n; i++) {
        free(rows[i].frame);
        free(rows[i].sessions);
    }
    free(rows);
}

static char *proposal_frame(const PGresult *r, int i)
{
    json_t *p = json_object();
    json_object_set_new(p, "id", sql_json_str(r, i, 0));
    json_object_set_new(p, "scout_id", sql_json_str(r, i, 1));
    json_object_set_new(p, "source_type", sql_json_str(r, i, 2));
    json_object_set_new(p, "source_msg_ref", sql_json_str(r, i, 3));
    json_object_set_new(p, "raw_subject", sql_json_str(r, i, 4));
    json_object_set_new(p, "raw_snippet", sql_json_str(r, i, 5));
    json_object_set_new(p, "category", json_string("unprocessed"));
    json_object_set_new(p, "payload", json_null());
    json_object_set_new(p, "triaged_at", sql_json_time(r, i, 7));
    json_object_set_new(p, "expires_at", sql_json_time(r, i, 8));
    json_t *f = json_pack("{s:s, s:o}", "type", "scout_proposal", "proposal", p);
    char *text = f ? json_text(f, NULL) : NULL;
    json_decref(f);
    return text;
}

char *scouts_windows_json(const struct scouts_window *w, size_t n)
{
    size_t cap = 3;
    for (size_t i = 0; i < n; i++)
        cap += 3 + (size_t)w[i].n * (SCOUTS_ID_LEN + 3);
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t len = 0;
    out[len++] = '[';
    for (size_t i = 0; i < n; i++) {
        if (i)
            out[len++] = ',';
        out[len++] = '[';
        for (int k = 0; k < w[i].n; k++) {
            if (k)
                out[len++] = ',';
            out[len++] = '"';
            /* ids come from the database (canonical uuids): nothing to escape */
            size_t idlen = strnlen(w[i].ids[k], SCOUTS_ID_LEN);
            memcpy(out + len, w[i].ids[k], idlen);
            len += idlen;
            out[len++] = '"';
        }
        out[len++] = ']';
    }
    out[len++] = ']';
    out[len] = '\0';
    return out;
}

int scouts_parse_sessions(const char *list, size_t nsess, int **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!list || !*list)
        return 0;
    size_t count = 1;
    for (const char *p = list; *p; p++)
        count += *p == ',';
    int *v = malloc(count * sizeof(int));
    if (!v)
        return -2;
    const char *p = list;
    for (size_t i = 0; i < count; i++) {
        char *end = (char *)p;
        long x = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : 0;
        if (end == p || x < 1 || (size_t)x > nsess || (*end != ',' && *end != '\0')) {
            free(v);
            return -1;
        }
        v[i] = (int)x - 1;
        p = *end ? end + 1 : end;
    }
    *out = v;
    *n = count;
    return 0;
}

struct deliver_arg {
    const char *user_id;
    int window;
    const char *windows;
    size_t nsess;
    struct scouts_pending *rows;
    size_t n;
    uint64_t marked;
    uint64_t first, lag_us; /* first deliveries, and their summed time since triage */
};

static int deliver_fn(struct pool_conn *c, void *arg)
{
    struct deliver_arg *a = arg;
    scouts_pending_free(a->rows, a->n);
    a->rows = NULL;
    a->n = 0;
    a->marked = 0;
    char lim[24];
    const char *p[] = {a->user_id, sql_fmt_ll(lim, a->window), a->windows};
    PGresult *r;
    int rc = run(c, &st_deliver, p, &r);
    if (rc != ST_OK)
        return rc;
    int n = PQntuples(r);
    if (n > 0) {
        a->rows = calloc((size_t)n, sizeof(*a->rows));
        if (!a->rows) {
            PQclear(r);
            return ST_ENOMEM;
        }
    }
    for (int i = 0; i < n; i++) {
        struct scouts_pending *row = &a->rows[a->n++];
        snprintf(row->id, sizeof(row->id), "%s", sql_str(r, i, 0));
        if (sql_isnull(r, i, 6))
            continue;
        a->marked++;
        if (sql_ll(r, i, 9) == 0) {
            int64_t lag = jtime_now_us() - sql_ll(r, i, 7);
            a->first++;
            a->lag_us += lag > 0 ? (uint64_t)lag : 0;
        }
        int prc = scouts_parse_sessions(sql_str(r, i, 6), a->nsess, &row->sessions,
                                        &row->nsessions);
        if (prc == 0 && !(row->frame = proposal_frame(r, i)))
            prc = -2;
        if (prc != 0) {
            PQclear(r);
            return prc == -2 ? ST_ENOMEM : ST_EINTERNAL;
        }
        row->len = strlen(row->frame);
    }
    PQclear(r);
    return ST_OK;
}

int scouts_deliver_fetch(struct scouts *s, const char *user_id, int window, const char *windows,
                         size_t nsess, struct scouts_pending **rows, size_t *n)
{
    struct deliver_arg a = {user_id, window, windows, nsess, NULL, 0, 0, 0, 0};
    int rc = pool_with(s->pool, deliver_fn, &a);
    if (rc != ST_OK) {
        scouts_pending_free(a.rows, a.n);
        return rc;
    }
    metrics_count(s->metrics, MC_PROPOSALS_DELIVERED, a.marked);
    metrics_count(s->metrics, MC_DELIVERY_FIRST, a.first);
    metrics_count(s->metrics, MC_DELIVERY_LAG_US, a.lag_us);
    *rows = a.rows;
    *n = a.n;
    return ST_OK;
}

struct ack_arg {
    struct scouts *s;
    const char *pid, *user_id, *device_id;
    bool found, changed;
};

static int ack_fn(struct pool_conn *c, void *arg)
{
    struct ack_arg *a = arg;
    a->found = a->changed = false;
    /* other instances hear of the ack and tell their sessions */
    const char *p[] = {a->pid, a->user_id, a->device_id, a->s->instance};
    PGresult *r;
    int rc = run(c, &st_ack, p, &r);
    if (rc != ST_OK)
        return rc;
    a->found = sql_ll(r, 0, 0) > 0;
    a->changed = sql_ll(r, 0, 1) > 0;
    PQclear(r);
    return ST_OK;
}

int scouts_ack(struct scouts *s, const char *pid, const char *user_id, const char *device_id,
               bool *found, bool *changed)
{
    *found = *changed = false;
    if (!scouts_uuid_valid(pid))
        return ST_OK;
    struct ack_arg a = {s, pid, user_id, device_id, false, false};
    int rc = pool_with(s->pool, ack_fn, &a);
    if (rc != ST_OK)
        return rc;
    *found = a.found;
    *changed = a.changed;
    if (a.changed)
        metrics_count(s->metrics, MC_PROPOSALS_ACKED, 1);
    return ST_OK;
}

/* ---------------------------------------------------------------- healer steps */

struct sweep_arg {
    struct scouts *s;
    json_t *failed; /* [{id, user_id, scout_id, attempts}] */
    long long requeued;
};

static int sweep_tx(struct pool_conn *c, void *arg)
{
    struct sweep_arg *a = arg;
    json_array_clear(a->failed);
    a->requeued = 0;
    char secs[24], max[24];
    const char *p[] = {sql_fmt_ll(secs, a->s->set.ack_timeout_s),
                       sql_fmt_ll(max, a->s->set.max_delivery_attempts)};
    PGresult *r;
    int rc = run(c, &st_sweep_fail, p, &r);
    if (rc != ST_OK)
        return rc;
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(a->failed,
                              json_pack("{s:o, s:o, s:o, s:I}", "id", sql_json_str(r, i, 0),
                                        "user_id", sql_json_str(r, i, 1), "scout_id",
                                        sql_json_str(r, i, 2), "attempts",
                                        (json_int_t)sql_ll(r, i, 3)));
    PQclear(r);
    if ((rc = run(c, &st_sweep_requeue, p, &r)) != ST_OK)
        return rc;
    json_t *users = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_array_append_new(users, sql_json_str(r, i, 0));
        a->requeued += sql_ll(r, i, 1);
    }
    PQclear(r);
    if (json_array_size(users) > 0) {
        char *text = json_text(users, NULL);
        const char *np[] = {text};
        rc = text ? run_discard(c, &st_notify_users, np) : ST_ENOMEM;
        free(text);
    }
    json_decref(users);
    return rc;
}

int scouts_delivery_sweep(struct scouts *s, long long *requeued, long long *failed)
{
    *requeued = *failed = 0;
    struct sweep_arg a = {s, json_array(), 0};
    if (!a.failed)
        return ST_ENOMEM;
    int rc = pool_tx(s->pool, sweep_tx, &a);
    if (rc == ST_OK) {
        size_t i;
        json_t *f;
        json_array_foreach(a.failed, i, f)
        {
            json_t *detail = json_pack("{s:O, s:O, s:O, s:i}", "user_id",
                                       json_object_get(f, "user_id"), "scout_id",
                                       json_object_get(f, "scout_id"), "attempts",
                                       json_object_get(f, "attempts"), "ack_timeout_s",
                                       s->set.ack_timeout_s);
            lessons_record_auto(s->lessons, "delivery_failed",
                                json_string_value(json_object_get(f, "id")), "delivery", detail);
            json_decref(detail);
        }
        *failed = (long long)json_array_size(a.failed);
        *requeued = a.requeued;
        metrics_count(s->metrics, MC_PROPOSALS_FAILED, (uint64_t)*failed);
        if (*failed > 0 || *requeued > 0) {
            struct log_line l;
            log_begin(&l, s->lg, LOG_INFO, "delivery sweep");
            log_int(&l, "requeued", *requeued);
            log_int(&l, "failed", *failed);
            log_end(&l);
        }
    }
    json_decref(a.failed);
    return rc;
}

static int expire_fn(struct pool_conn *c, void *arg)
{
    PGresult *r;
    int rc = run(c, &st_expire, NULL, &r);
    if (rc != ST_OK)
        return rc;
    *(long long *)arg = sql_ll(r, 0, 0);
    PQclear(r);
    return ST_OK;
}

int scouts_expire(struct scouts *s, long long *count)
{
    *count = 0;
    int rc = pool_with(s->pool, expire_fn, count);
    if (rc == ST_OK)
        metrics_count(s->metrics, MC_PROPOSALS_EXPIRED, (uint64_t)*count);
    return rc;
}

struct stats_arg {
    int64_t since_us;
    json_t *out;
};

static json_t *ms_or_null(const PGresult *r, int col)
{
    return sql_isnull(r, 0, col) ? json_null() : json_real(sql_dbl(r, 0, col));
}

static int stats_fn(struct pool_conn *c, void *arg)
{
    struct stats_arg *a = arg;
    json_decref(a->out);
    a->out = NULL;
    char since[32];
    const char *p[] = {sql_fmt_time(since, a->since_us)};
    PGresult *r;
    int rc = run(c, &st_stats_counts, p, &r);
    if (rc != ST_OK)
        return rc;
    json_t *counts = json_pack("{s:i, s:i, s:i, s:i, s:i}", "queued", 0, "delivered", 0,
                               "acked", 0, "failed", 0, "expired", 0);
    for (int i = 0; i < PQntuples(r); i++)
        json_object_set_new(counts, sql_str(r, i, 0), json_integer(sql_ll(r, i, 1)));
    PQclear(r);
    if ((rc = run(c, &st_stats_latency, p, &r)) != ST_OK) {
        json_decref(counts);
        return rc;
    }
    a->out = json_pack("{s:o, s:o, s:{s:o, s:o}, s:{s:o, s:o}}", "since",
                       jtime_json(a->since_us), "counts", counts, "queued_to_delivered_ms",
                       "p50", ms_or_null(r, 0), "p95", ms_or_null(r, 1), "delivered_to_acked_ms",
                       "p50", ms_or_null(r, 2), "p95", ms_or_null(r, 3));
    PQclear(r);
    return a->out ? ST_OK : ST_ENOMEM;
}

int scouts_delivery_stats(struct scouts *s, int64_t since_us, json_t **out)
{
    struct stats_arg a = {since_us, NULL};
    int rc = pool_with(s->pool, stats_fn, &a);
    if (rc != ST_OK) {
        json_decref(a.out);
        return rc;
    }
    *out = a.out;
    return ST_OK;
}

/* Runs a counting delete and adds its count to counts under kind. */
static int erase_count(struct pool_conn *c, const struct db_stmt *st, const char *const *p,
                       json_t *counts, const char *kind)
{
    PGresult *r;
    int rc = run(c, st, p, &r);
    if (rc != ST_OK)
        return rc;
    json_object_set_new(counts, kind, json_integer(sql_ll(r, 0, 0)));
    PQclear(r);
    return ST_OK;
}

int scouts_erase_user_tx(struct scouts *s, struct pool_conn *c, const char *user_id,
                         json_t *counts)
{
    (void)s;
    const char *p[] = {user_id};
    int rc = erase_count(c, &st_erase_proposals, p, counts, "proposals");
    if (rc == ST_OK)
        rc = erase_count(c, &st_erase_devices, p, counts, "devices");
    if (rc == ST_OK)
        rc = erase_count(c, &st_erase_scouts, p, counts, "scouts");
    if (rc == ST_OK)
        rc = run_discard(c, &st_erase_notify, p);
    return rc;
}

/* ---------------------------------------------------------------- warm-up */

/* Inputs that match no row: the nil uuid is never generated, and a user id has at least
 * one character. Nothing is written (the updates find nothing, so nothing is notified). */
#define NIL_UUID "00000000-0000-0000-0000-000000000000"

static int warm_conn(struct scouts *s, struct pool_conn *c)
{
    char ttl[24], lim[24];
    const char *pi[] = {NIL_UUID, "warm", "false", NULL, NULL, NULL, NULL,
                        sql_fmt_ll(ttl, s->set.proposal_ttl_days)};
    const char *pd[] = {"", sql_fmt_ll(lim, 1), "[[]]"};
    const char *ph[] = {NIL_UUID, "", s->instance};
    const char *pk[] = {NIL_UUID, "", NIL_UUID, "warm"};
    int rc = run_discard(c, &st_ingest, pi);
    if (rc == ST_OK)
        rc = run_discard(c, &st_deliver, pd);
    if (rc == ST_OK)
        rc = run_discard(c, &st_device_hello, ph);
    if (rc == ST_OK)
        rc = run_discard(c, &st_ack, pk);
    return rc;
}

int scouts_warm(struct scouts *s, int *warmed)
{
    *warmed = 0;
    struct pool_stats ps;
    pool_stats(s->pool, &ps);
    if (ps.size <= 0)
        return ST_OK;
    struct pool_conn **held = calloc((size_t)ps.size, sizeof(*held));
    if (!held)
        return ST_ENOMEM;
    /* Every connection free right now, all checked out before the first is warmed so
     * that each is a different one (the pool hands out the most recently returned
     * first). */
    int n = 0, rc = ST_OK;
    while (n < ps.size && pool_acquire_within(s->pool, 0, &held[n]) == ST_OK)
        n++;
    for (int i = 0; i < n; i++) {
        /* each goes back as soon as it is done (or once a statement failed) */
        if (rc == ST_OK && (rc = warm_conn(s, held[i])) == ST_OK)
            (*warmed)++;
        pool_release(s->pool, held[i]);
    }
    free(held);
    return n == 0 && ps.size > 0 ? ST_EUNAVAIL : rc;
}
