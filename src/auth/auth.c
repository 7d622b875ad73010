#include "steward/auth.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/sql.h"

#define RETIRED 4 /* snapshots kept after replacement: readers hold one for microseconds */

struct key_entry {
    unsigned char hash[32];
    enum auth_scope scope;
    long long id;
    char name[AUTH_NAME_MAX * 4 + 1];
};

struct snapshot {
    size_t count;
    struct key_entry keys[];
};

struct auth {
    struct pool *pool;
    const struct logger *lg;
    int refresh_ms;
    _Atomic(struct snapshot *) current;
    struct snapshot *retired[RETIRED];
    int retired_next;
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    struct crypto_md *sha256; /* fetched once: every request hashes its key */
};

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

static void fill_entry(struct key_entry *e, const PGresult *r, int row)
{
    memset(e, 0, sizeof(*e));
    hex_to_bin(PQgetvalue(r, row, 0), e->hash, sizeof(e->hash));
    if (auth_scope_parse(PQgetvalue(r, row, 1), &e->scope) != 0)
        e->scope = AUTH_NONE;
    e->id = sql_ll(r, row, 2);
    snprintf(e->name, sizeof(e->name), "%s", PQgetvalue(r, row, 3));
}

static int cmp_entry(const void *a, const void *b)
{
    return memcmp(((const struct key_entry *)a)->hash, ((const struct key_entry *)b)->hash, 32);
}

static int load_snapshot(struct pool_conn *c, void *arg)
{
    struct snapshot **out = arg;
    PGresult *r = pool_exec(c, &st_active, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        size_t n = (size_t)PQntuples(r);
        struct snapshot *s = malloc(sizeof(*s) + n * sizeof(struct key_entry));
        if (!s) {
            rc = ST_ENOMEM;
        } else {
            s->count = n;
            for (size_t i = 0; i < n; i++)
                fill_entry(&s->keys[i], r, (int)i);
            qsort(s->keys, n, sizeof(struct key_entry), cmp_entry);
            *out = s;
        }
    }
    PQclear(r);
    return rc;
}

/* Publishes a new snapshot; the old one is freed only RETIRED refreshes later, long
 * after any reader that loaded it has finished its lookup. */
static void publish(struct auth *a, struct snapshot *s)
{
    struct snapshot *old = atomic_exchange(&a->current, s);
    free(a->retired[a->retired_next]);
    a->retired[a->retired_next] = old;
    a->retired_next = (a->retired_next + 1) % RETIRED;
}

static int refresh(struct auth *a)
{
    struct snapshot *s = NULL;
    int rc = pool_with(a->pool, load_snapshot, &s);
    if (rc == ST_OK)
        publish(a, s);
    return rc;
}

static void *refresher(void *arg)
{
    struct auth *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += a->refresh_ms / 1000;
        ts.tv_nsec += (long)(a->refresh_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&a->cv, &a->mu, &ts);
        if (a->stop)
            break;
        pthread_mutex_unlock(&a->mu);
        refresh(a);
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
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
    a->pool = pool;
    a->lg = lg;
    a->refresh_ms = refresh_ms;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    return a;
}

int auth_start(struct auth *a)
{
    int rc = refresh(a);
    if (rc != ST_OK)
        log_msg(a->lg, LOG_WARN, "api key cache not loaded yet; keys are checked in the database",
                NULL);
    if (pthread_create(&a->thread, NULL, refresher, a) != 0)
        return ST_EINTERNAL;
    a->running = true;
    return ST_OK;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    if (a->running) {
        pthread_mutex_lock(&a->mu);
        a->stop = true;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->thread, NULL);
    }
    free(atomic_load(&a->current));
    for (int i = 0; i < RETIRED; i++)
        free(a->retired[i]);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    crypto_md_free(a->sha256);
    free(a);
}

struct lookup {
    char hex[65];
    struct key_entry entry;
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
 * (revoked), -1 absent. */
static int snapshot_lookup(struct auth *a, const unsigned char *hash, struct auth_principal *who)
{
    struct snapshot *s = atomic_load(&a->current);
    if (!s)
        return -1;
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = memcmp(s->keys[mid].hash, hash, 32);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= s->count || !crypto_equal(s->keys[lo].hash, hash, 32))
        return -1;
    who->scope = s->keys[lo].scope;
    who->key_id = s->keys[lo].id;
    memcpy(who->name, s->keys[lo].name, sizeof(who->name));
    return who->scope == AUTH_NONE ? 0 : 1;
}

int auth_check_cached(struct auth *a, const char *secret, struct auth_principal *who, bool *miss)
{
    unsigned char hash[32];
    *miss = false;
    if (crypto_md_digest(a->sha256, secret, strlen(secret), hash) != 0)
        return ST_EUNAVAIL;
    int found = snapshot_lookup(a, hash, who);
    *miss = found < 0;
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
    struct lookup lk = {0};
    crypto_hex(hash, sizeof(hash), lk.hex);
    int rc = pool_with(a->pool, lookup_db, &lk);
    if (rc != ST_OK)
        return rc;
    if (!lk.found || !crypto_equal(lk.entry.hash, hash, 32) || lk.entry.scope == AUTH_NONE)
        return ST_ENOTFOUND;
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
