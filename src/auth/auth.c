#include "steward/auth.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth_int.h"
#include "steward/audit.h"
#include "steward/clock.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/listen.h"
#include "steward/sched.h"
#include "steward/sql.h"

#define AUTH_MAX_HOOKS 4

struct auth {
    struct pool *pool;
    const struct logger *lg;
    int refresh_ms;
    struct auth_snaps snaps;
    struct crypto_md *sha256; /* fetched once: every request hashes its key */
    /* set while the listener's thread handles one read's revocations: the snapshot was
     * reloaded for them already */
    bool reloaded;
    /* called for every revocation this instance learns of; set before auth_start */
    size_t nhooks;
    struct {
        auth_revoke_fn fn;
        void *ctx;
    } hooks[AUTH_MAX_HOOKS];
    int session_ttl_s; /* console sessions (auth_sessions_configure) */
    bool secure_cookie;
    /* Unknown keys the database just denied, so that a flood of one wrong key costs one
     * query per refresh period, not one per request: direct-mapped by hash, each entry
     * good for refresh_ms (a key created meanwhile is in the snapshot by then, and the
     * snapshot is looked at first). */
    pthread_mutex_t neg_mu;
    struct neg_entry {
        unsigned char hash[32];
        int64_t until_ms;
    } neg[AUTH_NEG_SLOTS];
};

static struct neg_entry *neg_slot(struct auth *a, const unsigned char *hash)
{
    uint32_t k;
    memcpy(&k, hash, sizeof(k));
    return &a->neg[k % AUTH_NEG_SLOTS];
}

static bool neg_known(struct auth *a, const unsigned char *hash)
{
    pthread_mutex_lock(&a->neg_mu);
    struct neg_entry *e = neg_slot(a, hash);
    bool hit = e->until_ms > clock_now_ms() && memcmp(e->hash, hash, 32) == 0;
    pthread_mutex_unlock(&a->neg_mu);
    return hit;
}

static void neg_add(struct auth *a, const unsigned char *hash)
{
    pthread_mutex_lock(&a->neg_mu);
    struct neg_entry *e = neg_slot(a, hash);
    memcpy(e->hash, hash, 32);
    e->until_ms = clock_now_ms() + a->refresh_ms;
    pthread_mutex_unlock(&a->neg_mu);
}

/* The usable keys: not revoked, not expired (a key that expires while in a snapshot is
 * refused by the lookup itself). */
static const struct db_stmt st_active = {
    "auth_active",
    "SELECT key_hash, scope, id, name, " SQL_US(
        "expires_at") " FROM api_keys "
                      "WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    0};
static const struct db_stmt st_by_hash = {
    "auth_by_hash",
    "SELECT key_hash, scope, id, name, " SQL_US(
        "expires_at") " FROM api_keys "
                      "WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR "
                      "expires_at > now())",
    1};
#define KEY_COLS                                                                                   \
    "id, name, scope, " SQL_US("created_at") ", " SQL_US("last_used_at") ", " SQL_US(              \
        "revoked_at") ", " SQL_US("expires_at")
/* An expired key still holds its name in the unique index: it is retired (revoked as of
 * its expiry) before a new key takes the name. */
static const struct db_stmt st_retire_expired = {
    "auth_retire_expired",
    "UPDATE api_keys SET revoked_at = expires_at "
    "WHERE name = $1 AND revoked_at IS NULL AND expires_at <= now()",
    1};
static const struct db_stmt st_create = {
    "auth_create",
    "INSERT INTO api_keys (name, scope, key_hash, expires_at) "
    "VALUES ($1, $2, $3, $4::timestamptz) ON CONFLICT DO NOTHING RETURNING " KEY_COLS,
    4};
/* Revocation and its notification in one statement: every instance's listener hears it
 * once the transaction commits. */
static const struct db_stmt st_revoke = {
    "auth_revoke",
    "WITH k AS (UPDATE api_keys SET revoked_at = now() "
    "           WHERE name = $1 AND revoked_at IS NULL RETURNING id, name) "
    "SELECT k.id, pg_notify('" AUTH_CHANNEL "', 'r|' || k.name) FROM k",
    1};
static const struct db_stmt st_list = {
    "auth_list",
    "SELECT " KEY_COLS " FROM api_keys WHERE id < $1::int8 ORDER BY id DESC LIMIT $2::int4", 2};
/* The last uses seen through a snapshot: [{"id":..,"us":..}, ...]. */
static const struct db_stmt st_touch = {
    "auth_touch",
    "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, "
    "to_timestamp(x.us / 1000000.0)) FROM json_to_recordset($1::json) AS x(id int8, us int8) "
    "WHERE k.id = x.id",
    1};
static const struct db_stmt st_retire = {
    "auth_retire",
    "WITH k AS (UPDATE api_keys SET revoked_at = now() "
    "           WHERE name = $1 AND revoked_at IS NULL AND key_hash <> $2 RETURNING name) "
    "SELECT pg_notify('" AUTH_CHANNEL "', 'r|' || k.name) FROM k",
    2};
static const struct db_stmt st_ensure = {
    "auth_ensure",
    "INSERT INTO api_keys (name, scope, key_hash) SELECT $1, $2, $3 "
    "WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE key_hash = $3 AND revoked_at IS NULL) "
    "ON CONFLICT DO NOTHING",
    3};

/* Console sessions. A session is checked against its key on every request (the join on
 * api_keys.revoked_at), so revoking the key ends it at once on every instance. */
static const struct db_stmt st_session_check = {
    "auth_session_check",
    "SELECT k.scope, k.id, k.name, s.csrf_token FROM deck_sessions s"
    " JOIN api_keys k ON k.id = s.key_id"
    " WHERE s.id_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL"
    " AND (k.expires_at IS NULL OR k.expires_at > now())",
    1};
static const struct db_stmt st_session_create = {
    "auth_session_create",
    "WITH gone AS (DELETE FROM deck_sessions WHERE expires_at < now() - interval '1 day')"
    " INSERT INTO deck_sessions (id_hash, key_id, csrf_token, expires_at)"
    " SELECT $1, k.id, $3, now() + make_interval(secs => $4::int) FROM api_keys k"
    " WHERE k.id = $2::int8 AND k.revoked_at IS NULL"
    " AND (k.expires_at IS NULL OR k.expires_at > now())"
    " RETURNING to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    4};
static const struct db_stmt st_session_get = {
    "auth_session_get",
    "SELECT k.scope, k.name, s.csrf_token,"
    " to_char(s.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    " FROM deck_sessions s JOIN api_keys k ON k.id = s.key_id"
    " WHERE s.id_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL"
    " AND (k.expires_at IS NULL OR k.expires_at > now())",
    1};
static const struct db_stmt st_session_end = {"auth_session_end",
                                              "DELETE FROM deck_sessions WHERE id_hash = $1", 1};

bool auth_name_valid(const char *name)
{
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n >= 1 && n <= AUTH_NAME_MAX;
}

static int hex_to_bin(const char *hex, unsigned char *out, size_t n)
{
    if (strlen(hex) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static void fill_entry(struct auth_key *e, const PGresult *r, int row)
{
    memset(e, 0, sizeof(*e));
    hex_to_bin(PQgetvalue(r, row, 0), e->hash, sizeof(e->hash));
    if (auth_scope_parse(PQgetvalue(r, row, 1), &e->scope) != 0)
        e->scope = AUTH_NONE;
    e->id = sql_ll(r, row, 2);
    snprintf(e->name, sizeof(e->name), "%s", PQgetvalue(r, row, 3));
    e->expires_us = sql_isnull(r, row, 4) ? 0 : sql_ll(r, row, 4);
    atomic_init(&e->used_us, 0);
}

/* ---- the snapshot cell: the lifetime rule is stated in auth_int.h ---- */

#define CUR_SHIFT 48
#define CUR_COUNT ((UINT64_C(1) << CUR_SHIFT) - 1)

int auth_snaps_init(struct auth_snaps *c)
{
    atomic_init(&c->cur, 0);
    for (size_t i = 0; i < AUTH_SNAP_SLOTS; i++)
        atomic_init(&c->slot[i], NULL);
    c->next = 0;
    atomic_init(&c->published, 0);
    atomic_init(&c->freed, 0);
    return pthread_mutex_init(&c->publish_mu, NULL) == 0 ? 0 : -1;
}

struct auth_snapshot *auth_snapshot_new(size_t count)
{
    if (count > (SIZE_MAX - sizeof(struct auth_snapshot)) / sizeof(struct auth_key))
        return NULL;
    struct auth_snapshot *s = malloc(sizeof(*s) + count * sizeof(struct auth_key));
    if (!s)
        return NULL;
    atomic_init(&s->refs, 0);
    s->slot = 0;
    s->count = count;
    return s;
}

static int cmp_key(const void *a, const void *b)
{
    return memcmp(((const struct auth_key *)a)->hash, ((const struct auth_key *)b)->hash, 32);
}

void auth_snapshot_sort(struct auth_snapshot *s)
{
    qsort(s->keys, s->count, sizeof(struct auth_key), cmp_key);
}

const struct auth_key *auth_snapshot_find(const struct auth_snapshot *s,
                                          const unsigned char hash[32])
{
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(s->keys[mid].hash, hash, 32) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= s->count || !crypto_equal(s->keys[lo].hash, hash, 32))
        return NULL;
    return &s->keys[lo];
}

/* Called by whoever took refs to 0: nobody holds s and cur no longer names it. */
static void snapshot_free(struct auth_snaps *c, struct auth_snapshot *s)
{
    unsigned k = s->slot;
    free(s);
    atomic_fetch_add_explicit(&c->freed, 1, memory_order_relaxed);
    /* release: a publisher that finds the slot empty reuses it after this free */
    atomic_store_explicit(&c->slot[k], NULL, memory_order_release);
}

/* Settles the snapshot named by a word just taken out of cur. */
static void retire(struct auth_snaps *c, uint64_t word)
{
    unsigned k = (unsigned)(word >> CUR_SHIFT);
    if (k == 0)
        return; /* slot 0 holds no snapshot: its acquisitions hold nothing */
    struct auth_snapshot *s = atomic_load_explicit(&c->slot[k], memory_order_relaxed);
    long long n = (long long)(word & CUR_COUNT);
    /* acq_rel: if this makes refs 0, every reader's release happens before the free */
    if (atomic_fetch_add_explicit(&s->refs, n, memory_order_acq_rel) + n == 0)
        snapshot_free(c, s);
}

int auth_snaps_publish(struct auth_snaps *c, struct auth_snapshot *s)
{
    pthread_mutex_lock(&c->publish_mu);
    unsigned k = 0;
    for (unsigned i = 0; i < AUTH_SNAP_SLOTS - 1 && k == 0; i++) {
        unsigned j = 1 + (c->next + i) % (AUTH_SNAP_SLOTS - 1);
        /* acquire: pairs with the release in snapshot_free of the slot's last snapshot */
        if (!atomic_load_explicit(&c->slot[j], memory_order_acquire))
            k = j;
    }
    if (k == 0) {
        pthread_mutex_unlock(&c->publish_mu);
        return -1;
    }
    c->next = k;
    s->slot = k;
    atomic_store_explicit(&s->refs, 0, memory_order_relaxed);
    atomic_store_explicit(&c->slot[k], s, memory_order_relaxed);
    /* release: a reader whose fetch_add reads this word (or a later one) sees s whole */
    uint64_t old =
        atomic_exchange_explicit(&c->cur, (uint64_t)k << CUR_SHIFT, memory_order_acq_rel);
    atomic_fetch_add_explicit(&c->published, 1, memory_order_relaxed);
    retire(c, old);
    pthread_mutex_unlock(&c->publish_mu);
    return 0;
}

const struct auth_snapshot *auth_snaps_acquire(struct auth_snaps *c)
{
    /* acquire: synchronises with the exchange in auth_snaps_publish that set the slot */
    uint64_t word = atomic_fetch_add_explicit(&c->cur, 1, memory_order_acquire);
    unsigned k = (unsigned)(word >> CUR_SHIFT);
    return k ? atomic_load_explicit(&c->slot[k], memory_order_relaxed) : NULL;
}

void auth_snaps_release(struct auth_snaps *c, const struct auth_snapshot *cs)
{
    if (!cs)
        return;
    struct auth_snapshot *s = (struct auth_snapshot *)cs;
    /* release: this reader's reads of s happen before the free; acquire: if this is the
     * last reference, everyone else's do too */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snapshot_free(c, s);
}

void auth_snaps_destroy(struct auth_snaps *c)
{
    retire(c, atomic_exchange_explicit(&c->cur, 0, memory_order_acq_rel));
    pthread_mutex_destroy(&c->publish_mu);
}

/* ---- loading from the database ---- */

static int load_snapshot(struct pool_conn *c, void *arg)
{
    struct auth_snapshot **out = arg;
    PGresult *r = pool_exec(c, &st_active, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        size_t n = (size_t)PQntuples(r);
        struct auth_snapshot *s = auth_snapshot_new(n);
        if (!s) {
            rc = ST_ENOMEM;
        } else {
            for (size_t i = 0; i < n; i++)
                fill_entry(&s->keys[i], r, (int)i);
            auth_snapshot_sort(s);
            *out = s;
        }
    }
    PQclear(r);
    return rc;
}

static int touch_fn(struct pool_conn *c, void *arg)
{
    const char *p[] = {arg};
    PGresult *r = pool_exec(c, &st_touch, p);
    int rc = pool_result_err(c, r);
    PQclear(r);
    return rc;
}

/* Writes the last uses seen through the current snapshot to api_keys.last_used_at. A use
 * between this and the next publish is stamped on the old snapshot and lost: the next
 * use records the key again. */
static void flush_used(struct auth *a)
{
    const struct auth_snapshot *s = auth_snaps_acquire(&a->snaps);
    json_t *used = s ? json_array() : NULL;
    for (size_t i = 0; used && i < s->count; i++) {
        int64_t us = atomic_load_explicit(&s->keys[i].used_us, memory_order_relaxed);
        if (us > 0)
            json_array_append_new(used, json_pack("{s:I, s:I}", "id", (json_int_t)s->keys[i].id,
                                                  "us", (json_int_t)us));
    }
    auth_snaps_release(&a->snaps, s);
    char *text = json_array_size(used) > 0 ? json_dumps(used, JSON_COMPACT) : NULL;
    json_decref(used);
    if (text && pool_with(a->pool, touch_fn, text) != ST_OK)
        log_msg(a->lg, LOG_WARN, "api key last use not recorded", NULL);
    free(text);
}

int auth_refresh(struct auth *a)
{
    flush_used(a);
    struct auth_snapshot *s = NULL;
    int rc = pool_with(a->pool, load_snapshot, &s);
    if (rc != ST_OK)
        return rc;
    if (auth_snaps_publish(&a->snaps, s) != 0) {
        free(s);
        log_msg(a->lg, LOG_WARN, "api key snapshot not replaced: all slots held by readers", NULL);
        return ST_EUNAVAIL;
    }
    return ST_OK;
}

/* The periodic refresh, run by the scheduler. */
static void refresh_job(void *arg)
{
    auth_refresh(arg);
}

struct auth *auth_new(struct pool *pool, const struct logger *lg, int refresh_ms)
{
    struct auth *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->sha256 = crypto_md_sha256();
    if (!a->sha256) {
        free(a);
        return NULL;
    }
    if (auth_snaps_init(&a->snaps) != 0) {
        crypto_md_free(a->sha256);
        free(a);
        return NULL;
    }
    a->pool = pool;
    a->lg = lg;
    a->refresh_ms = refresh_ms;
    pthread_mutex_init(&a->neg_mu, NULL);
    return a;
}

/* ---- revocations from other instances ----
 *
 * The process's listener (steward/listen.h) LISTENs on AUTH_CHANNEL too. A revocation
 * anywhere (REST on any instance, the CLI) notifies it when its transaction commits; the
 * snapshot is reloaded at once and the revocation hooks run, so a revoked key stops
 * working on every instance within a round trip instead of a refresh period. After a
 * reconnect the snapshot is reloaded too (a revocation may have been missed meanwhile);
 * the periodic refresh stays as the backstop. The callbacks run on the listener's
 * thread. */

static void run_hooks(struct auth *a, const char *name)
{
    for (size_t i = 0; i < a->nhooks; i++)
        a->hooks[i].fn(a->hooks[i].ctx, name);
}

static void on_connected(void *ctx, bool first)
{
    if (!first) /* auth_start loaded the first snapshot */
        auth_refresh(ctx);
}

/* One reload for all the revocations of one read, before the first one's hooks. */
static void on_notify(void *ctx, const char *payload)
{
    struct auth *a = ctx;
    if (!a->reloaded && auth_refresh(a) != ST_OK)
        log_msg(a->lg, LOG_WARN, "api key snapshot not reloaded after a revocation", NULL);
    a->reloaded = true;
    if (strncmp(payload, "r|", 2) == 0 && auth_name_valid(payload + 2))
        run_hooks(a, payload + 2);
}

static void on_drained(void *ctx)
{
    struct auth *a = ctx;
    a->reloaded = false;
}

void auth_on_revoke(struct auth *a, auth_revoke_fn fn, void *ctx)
{
    if (a->nhooks < AUTH_MAX_HOOKS) {
        a->hooks[a->nhooks].fn = fn;
        a->hooks[a->nhooks].ctx = ctx;
        a->nhooks++;
    }
}

int auth_start(struct auth *a, struct sched *sc, struct listener *l)
{
    int rc = auth_refresh(a);
    if (rc != ST_OK)
        log_msg(a->lg, LOG_WARN, "api key cache not loaded yet; keys are checked in the database",
                NULL);
    const struct sched_job job = {
        .name = "auth_refresh", .fn = refresh_job, .ctx = a, .period_ms = a->refresh_ms};
    if (sched_add(sc, &job) != 0)
        return ST_EINTERNAL;
    const struct listen_channel ch = {.name = AUTH_CHANNEL,
                                      .ctx = a,
                                      .connected = on_connected,
                                      .notify = on_notify,
                                      .drained = on_drained};
    if (l && listener_add(l, &ch) != 0)
        return ST_EINTERNAL;
    return ST_OK;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    auth_snaps_destroy(&a->snaps);
    crypto_md_free(a->sha256);
    pthread_mutex_destroy(&a->neg_mu);
    free(a);
}

struct lookup {
    char hex[65];
    struct auth_key entry;
    bool found;
};

static int lookup_db(struct pool_conn *c, void *arg)
{
    struct lookup *lk = arg;
    const char *params[] = {lk->hex};
    PGresult *r = pool_exec(c, &st_by_hash, params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 1) {
        fill_entry(&lk->entry, r, 0);
        lk->found = true;
    }
    PQclear(r);
    return rc;
}

/* ---- console sessions ---- */

/* A session id as the cookie carries it: 64 lowercase hex digits. */
static bool session_id_valid(const char *id, size_t len)
{
    if (len != 64)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

struct session_q {
    const struct db_stmt *st;
    const char *params[4];
    PGresult *r;
};

static int session_q(struct pool_conn *c, void *arg)
{
    struct session_q *q = arg;
    q->r = pool_exec(c, q->st, q->params);
    int rc = pool_result_err(c, q->r);
    if (rc != ST_OK) {
        PQclear(q->r);
        q->r = NULL;
    }
    return rc;
}

/* body is "<id>:<csrf>" (csrf may be empty). */
static int session_check(struct auth *a, const char *body, struct auth_principal *who)
{
    const char *colon = strchr(body, ':');
    if (!colon || !session_id_valid(body, (size_t)(colon - body)))
        return ST_ENOTFOUND;
    char hex[65];
    crypto_sha256_hex(body, 64, hex);
    struct session_q q = {&st_session_check, {hex}, NULL};
    int rc = pool_with(a->pool, session_q, &q);
    if (rc != ST_OK)
        return rc;
    rc = ST_ENOTFOUND;
    enum auth_scope scope;
    if (PQntuples(q.r) == 1 && auth_scope_parse(PQgetvalue(q.r, 0, 0), &scope) == 0) {
        who->scope = scope;
        who->key_id = atoll(PQgetvalue(q.r, 0, 1));
        snprintf(who->name, sizeof(who->name), "%s", PQgetvalue(q.r, 0, 2));
        who->session = true;
        const char *want = PQgetvalue(q.r, 0, 3), *got = colon + 1;
        who->csrf_ok = strlen(got) == 64 && strlen(want) == 64 && crypto_equal(got, want, 64);
        rc = ST_OK;
    }
    PQclear(q.r);
    return rc;
}

void auth_sessions_configure(struct auth *a, int ttl_s, bool secure_cookie)
{
    a->session_ttl_s = ttl_s;
    a->secure_cookie = secure_cookie;
}

int auth_session_create(struct auth *a, const struct auth_principal *who, struct auth_session *out)
{
    if (crypto_token(out->id, sizeof(out->id), "", 32) != 0 ||
        crypto_token(out->csrf_token, sizeof(out->csrf_token), "", 32) != 0)
        return ST_EINTERNAL;
    char hex[65], keybuf[24], ttlbuf[24];
    crypto_sha256_hex(out->id, 64, hex);
    snprintf(keybuf, sizeof(keybuf), "%lld", who->key_id);
    snprintf(ttlbuf, sizeof(ttlbuf), "%d", a->session_ttl_s);
    struct session_q q = {&st_session_create, {hex, keybuf, out->csrf_token, ttlbuf}, NULL};
    int rc = pool_with(a->pool, session_q, &q);
    if (rc != ST_OK)
        return rc;
    if (PQntuples(q.r) == 1) {
        snprintf(out->expires_at, sizeof(out->expires_at), "%s", PQgetvalue(q.r, 0, 0));
        out->scope = who->scope;
        snprintf(out->name, sizeof(out->name), "%s", who->name);
        out->ttl_s = a->session_ttl_s;
        out->secure_cookie = a->secure_cookie;
    } else {
        rc = ST_ENOTFOUND; /* the key was revoked meanwhile */
    }
    PQclear(q.r);
    return rc;
}

int auth_session_get(struct auth *a, const char *id, struct auth_session *out)
{
    if (!session_id_valid(id, strlen(id)))
        return ST_ENOTFOUND;
    char hex[65];
    crypto_sha256_hex(id, 64, hex);
    struct session_q q = {&st_session_get, {hex}, NULL};
    int rc = pool_with(a->pool, session_q, &q);
    if (rc != ST_OK)
        return rc;
    rc = ST_ENOTFOUND;
    if (PQntuples(q.r) == 1 && auth_scope_parse(PQgetvalue(q.r, 0, 0), &out->scope) == 0) {
        snprintf(out->id, sizeof(out->id), "%s", id);
        snprintf(out->name, sizeof(out->name), "%s", PQgetvalue(q.r, 0, 1));
        snprintf(out->csrf_token, sizeof(out->csrf_token), "%s", PQgetvalue(q.r, 0, 2));
        snprintf(out->expires_at, sizeof(out->expires_at), "%s", PQgetvalue(q.r, 0, 3));
        out->ttl_s = a->session_ttl_s;
        out->secure_cookie = a->secure_cookie;
        rc = ST_OK;
    }
    PQclear(q.r);
    return rc;
}

int auth_session_end(struct auth *a, const char *id)
{
    if (!session_id_valid(id, strlen(id)))
        return ST_OK;
    char hex[65];
    crypto_sha256_hex(id, 64, hex);
    struct session_q q = {&st_session_end, {hex}, NULL};
    int rc = pool_with(a->pool, session_q, &q);
    PQclear(q.r);
    return rc;
}

bool auth_session_secure_cookie(const struct auth *a)
{
    return a->secure_cookie;
}

/* Looks the hash up in the snapshot: 1 found (who filled), 0 found but not usable
 * (revoked), -1 absent. Holds the snapshot only for the lookup. */
static int snapshot_lookup(struct auth *a, const unsigned char *hash, struct auth_principal *who)
{
    const struct auth_snapshot *s = auth_snaps_acquire(&a->snaps);
    const struct auth_key *k = s ? auth_snapshot_find(s, hash) : NULL;
    int found = -1;
    if (k) {
        int64_t now = clock_wall_us();
        who->scope = k->scope;
        who->key_id = k->id;
        memcpy(who->name, k->name, sizeof(who->name));
        found = who->scope == AUTH_NONE || (k->expires_us && now >= k->expires_us) ? 0 : 1;
        /* the snapshot's keys are immutable but for this stamp (see auth_int.h) */
        _Atomic int64_t *used = (_Atomic int64_t *)&k->used_us;
        if (found > 0 && now - atomic_load_explicit(used, memory_order_relaxed) >= 1000000)
            atomic_store_explicit(used, now, memory_order_relaxed);
    }
    auth_snaps_release(&a->snaps, s);
    return found;
}

int auth_check_cached(struct auth *a, const char *secret, struct auth_principal *who, bool *miss)
{
    unsigned char hash[32];
    *miss = false;
    if (strncmp(secret, AUTH_SESSION_PREFIX, strlen(AUTH_SESSION_PREFIX)) == 0) {
        *miss = true; /* a session is always checked against the database */
        return ST_ENOTFOUND;
    }
    if (crypto_md_digest(a->sha256, secret, strlen(secret), hash) != 0)
        return ST_EUNAVAIL;
    int found = snapshot_lookup(a, hash, who);
    *miss = found < 0 && !neg_known(a, hash);
    return found > 0 ? ST_OK : ST_ENOTFOUND;
}

int auth_check(struct auth *a, const char *secret, struct auth_principal *who)
{
    unsigned char hash[32];
    if (strncmp(secret, AUTH_SESSION_PREFIX, strlen(AUTH_SESSION_PREFIX)) == 0)
        return session_check(a, secret + strlen(AUTH_SESSION_PREFIX), who);
    if (crypto_md_digest(a->sha256, secret, strlen(secret), hash) != 0)
        return ST_EUNAVAIL;
    int found = snapshot_lookup(a, hash, who);
    if (found >= 0)
        return found > 0 ? ST_OK : ST_ENOTFOUND;
    if (neg_known(a, hash))
        return ST_ENOTFOUND;
    struct lookup lk = {0};
    crypto_hex(hash, sizeof(hash), lk.hex);
    int rc = pool_with(a->pool, lookup_db, &lk);
    if (rc != ST_OK)
        return rc;
    if (!lk.found || !crypto_equal(lk.entry.hash, hash, 32) || lk.entry.scope == AUTH_NONE) {
        neg_add(a, hash);
        return ST_ENOTFOUND;
    }
    who->scope = lk.entry.scope;
    who->key_id = lk.entry.id;
    memcpy(who->name, lk.entry.name, sizeof(who->name));
    return ST_OK;
}

struct key_write {
    const struct db_stmt *st;
    const char *params[3];
    bool changed;
};

static int key_write(struct pool_conn *c, void *arg)
{
    struct key_write *kw = arg;
    PGresult *r = pool_exec(c, kw->st, kw->params);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        kw->changed = PQntuples(r) > 0 || atoi(PQcmdTuples(r)) > 0;
    PQclear(r);
    return rc;
}

static json_t *key_json(const PGresult *r, int row)
{
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)sql_ll(r, row, 0),
                     "name", sql_json_str(r, row, 1), "scope", sql_json_str(r, row, 2),
                     "created_at", sql_json_time(r, row, 3), "last_used_at",
                     sql_json_time(r, row, 4), "revoked_at", sql_json_time(r, row, 5), "expires_at",
                     sql_json_time(r, row, 6));
}

struct create_tx {
    const char *name, *scope, *hex, *expires, *actor;
    json_t *out;
};

static int create_fn(struct pool_conn *c, void *arg)
{
    struct create_tx *t = arg;
    json_decref(t->out);
    t->out = NULL;
    const char *pr[] = {t->name};
    PGresult *r = pool_exec(c, &st_retire_expired, pr);
    int rc = pool_result_err(c, r);
    PQclear(r);
    if (rc != ST_OK)
        return rc;
    const char *p[] = {t->name, t->scope, t->hex, t->expires};
    r = pool_exec(c, &st_create, p);
    rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_ECONFLICT;
    if (rc == ST_OK && !(t->out = key_json(r, 0)))
        rc = ST_ENOMEM;
    PQclear(r);
    if (rc != ST_OK)
        return rc;
    char target[8 + sizeof(((struct auth_key *)0)->name)];
    snprintf(target, sizeof(target), "key:%s", t->name);
    json_t *d = json_pack("{s:s, s:O}", "scope", t->scope, "expires_at",
                          json_object_get(t->out, "expires_at"));
    rc = d ? audit_record_tx(c, t->actor, "key.create", target, d) : ST_ENOMEM;
    json_decref(d);
    return rc;
}

int auth_key_create_full(struct pool *pool, const char *name, enum auth_scope scope,
                         int64_t expires_us, const char *actor, char *secret, size_t cap,
                         json_t **out)
{
    if (out)
        *out = NULL;
    if (cap < AUTH_SECRET_CAP || crypto_token(secret, cap, "stw_", 24) != 0)
        return ST_EINTERNAL;
    char hex[65], exp[32];
    crypto_sha256_hex(secret, strlen(secret), hex);
    struct create_tx t = {name,  auth_scope_name(scope),
                          hex,   expires_us ? sql_fmt_time(exp, expires_us) : NULL,
                          actor, NULL};
    int rc = pool_tx(pool, create_fn, &t);
    if (rc == ST_OK && out)
        *out = t.out;
    else
        json_decref(t.out);
    if (rc != ST_OK)
        memset(secret, 0, cap);
    return rc;
}

int auth_create(struct auth *a, const char *name, enum auth_scope scope, int64_t expires_us,
                const char *actor, char *secret, size_t cap, json_t **out)
{
    return auth_key_create_full(a->pool, name, scope, expires_us, actor, secret, cap, out);
}

int auth_key_create(struct pool *pool, const char *name, enum auth_scope scope, char *secret,
                    size_t cap)
{
    return auth_key_create_full(pool, name, scope, 0, "cli", secret, cap, NULL);
}

struct revoke_tx {
    const char *name, *actor;
};

static int revoke_fn(struct pool_conn *c, void *arg)
{
    struct revoke_tx *t = arg;
    const char *p[] = {t->name};
    PGresult *r = pool_exec(c, &st_revoke, p);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) == 0)
        rc = ST_ENOTFOUND;
    PQclear(r);
    if (rc != ST_OK)
        return rc;
    char target[8 + sizeof(((struct auth_key *)0)->name)];
    snprintf(target, sizeof(target), "key:%s", t->name);
    return audit_record_tx(c, t->actor, "key.revoke", target, NULL);
}

int auth_key_revoke_by(struct pool *pool, const char *name, const char *actor)
{
    struct revoke_tx t = {name, actor};
    return pool_tx(pool, revoke_fn, &t);
}

int auth_key_revoke(struct pool *pool, const char *name)
{
    return auth_key_revoke_by(pool, name, "cli");
}

int auth_revoke(struct auth *a, const char *name, const char *actor)
{
    int rc = auth_key_revoke_by(a->pool, name, actor);
    if (rc != ST_OK)
        return rc;
    /* this instance at once; the others (and this one again) through the notification */
    if (auth_refresh(a) != ST_OK)
        log_msg(a->lg, LOG_WARN, "api key snapshot not reloaded after a revocation", NULL);
    run_hooks(a, name);
    return ST_OK;
}

int auth_keys_list(struct auth *a, int limit, long long before_id, json_t **items,
                   long long *next_before)
{
    const char *params[] = {NULL, NULL};
    return sql_page(a->pool, &st_list, params, before_id, limit, key_json, items, next_before);
}

/* A changed STEWARD_ADMIN_KEY replaces the key of that name instead of adding one. */
static int ensure_tx(struct pool_conn *c, void *arg)
{
    struct key_write *kw = arg;
    const char *params[] = {kw->params[0], kw->params[2]};
    PGresult *r = pool_exec(c, &st_retire, params);
    int rc = pool_result_err(c, r);
    PQclear(r);
    return rc == ST_OK ? key_write(c, kw) : rc;
}

int auth_key_ensure(struct pool *pool, const char *name, const char *secret, enum auth_scope scope)
{
    char hex[65];
    crypto_sha256_hex(secret, strlen(secret), hex);
    struct key_write kw = {&st_ensure, {name, auth_scope_name(scope), hex}, false};
    return pool_tx(pool, ensure_tx, &kw);
}

static int verify(void *ctx, const char *secret, struct auth_principal *who)
{
    return auth_check(ctx, secret, who);
}

static int verify_cached(void *ctx, const char *secret, struct auth_principal *who, bool *miss)
{
    return auth_check_cached(ctx, secret, who, miss);
}

struct auth_verifier auth_verifier(struct auth *a)
{
    return (struct auth_verifier){.ctx = a, .check = verify, .check_cached = verify_cached};
}
