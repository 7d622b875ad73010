#include "steward/auth.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth_int.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/sched.h"
#include "steward/sql.h"

struct auth {
    struct pool *pool;
    const struct logger *lg;
    int refresh_ms;
    struct auth_snaps snaps;
    struct crypto_md *sha256; /* fetched once: every request hashes its key */
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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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
    bool hit = e->until_ms > now_ms() && memcmp(e->hash, hash, 32) == 0;
    pthread_mutex_unlock(&a->neg_mu);
    return hit;
}

static void neg_add(struct auth *a, const unsigned char *hash)
{
    pthread_mutex_lock(&a->neg_mu);
    struct neg_entry *e = neg_slot(a, hash);
    memcpy(e->hash, hash, 32);
    e->until_ms = now_ms() + a->refresh_ms;
    pthread_mutex_unlock(&a->neg_mu);
}

static const struct db_stmt st_active = {
    "auth_active", "SELECT key_hash, scope, id, name FROM api_keys WHERE revoked_at IS NULL", 0};
static const struct db_stmt st_by_hash = {
    "auth_by_hash",
    "SELECT key_hash, scope, id, name FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", 1};
static const struct db_stmt st_create = {
    "auth_create",
    "INSERT INTO api_keys (name, scope, key_hash) VALUES ($1, $2, $3) "
    "ON CONFLICT DO NOTHING RETURNING id",
    3};
static const struct db_stmt st_revoke = {
    "auth_revoke",
    "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id",
    1};
static const struct db_stmt st_retire = {
    "auth_retire",
    "UPDATE api_keys SET revoked_at = now() "
    "WHERE name = $1 AND revoked_at IS NULL AND key_hash <> $2",
    2};
static const struct db_stmt st_ensure = {
    "auth_ensure",
    "INSERT INTO api_keys (name, scope, key_hash) SELECT $1, $2, $3 "
    "WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE key_hash = $3 AND revoked_at IS NULL) "
    "ON CONFLICT DO NOTHING",
    3};

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

int auth_refresh(struct auth *a)
{
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

int auth_start(struct auth *a, struct sched *sc)
{
    int rc = auth_refresh(a);
    if (rc != ST_OK)
        log_msg(a->lg, LOG_WARN, "api key cache not loaded yet; keys are checked in the database",
                NULL);
    const struct sched_job job = {
        .name = "auth_refresh", .fn = refresh_job, .ctx = a, .period_ms = a->refresh_ms};
    if (sched_add(sc, &job) != 0)
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

/* Looks the hash up in the snapshot: 1 found (who filled), 0 found but not usable
 * (revoked), -1 absent. Holds the snapshot only for the lookup. */
static int snapshot_lookup(struct auth *a, const unsigned char *hash, struct auth_principal *who)
{
    const struct auth_snapshot *s = auth_snaps_acquire(&a->snaps);
    const struct auth_key *k = s ? auth_snapshot_find(s, hash) : NULL;
    int found = -1;
    if (k) {
        who->scope = k->scope;
        who->key_id = k->id;
        memcpy(who->name, k->name, sizeof(who->name));
        found = who->scope == AUTH_NONE ? 0 : 1;
    }
    auth_snaps_release(&a->snaps, s);
    return found;
}

int auth_check_cached(struct auth *a, const char *secret, struct auth_principal *who, bool *miss)
{
    unsigned char hash[32];
    *miss = false;
    if (crypto_md_digest(a->sha256, secret, strlen(secret), hash) != 0)
        return ST_EUNAVAIL;
    int found = snapshot_lookup(a, hash, who);
    *miss = found < 0 && !neg_known(a, hash);
    return found > 0 ? ST_OK : ST_ENOTFOUND;
}

int auth_check(struct auth *a, const char *secret, struct auth_principal *who)
{
    unsigned char hash[32];
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

int auth_key_create(struct pool *pool, const char *name, enum auth_scope scope, char *secret,
                    size_t cap)
{
    if (cap < AUTH_SECRET_CAP || crypto_token(secret, cap, "stw_", 24) != 0)
        return ST_EINTERNAL;
    char hex[65];
    crypto_sha256_hex(secret, strlen(secret), hex);
    struct key_write kw = {&st_create, {name, auth_scope_name(scope), hex}, false};
    int rc = pool_with(pool, key_write, &kw);
    if (rc == ST_OK && !kw.changed)
        rc = ST_ECONFLICT;
    return rc;
}

int auth_key_revoke(struct pool *pool, const char *name)
{
    struct key_write kw = {&st_revoke, {name}, false};
    int rc = pool_with(pool, key_write, &kw);
    if (rc == ST_OK && !kw.changed)
        rc = ST_ENOTFOUND;
    return rc;
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
