/* Users: the user-id rule and the erasure's orchestration; every SQL statement of it. */
#include "steward/users.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/audit.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/utf8.h"

struct users {
    struct pool *pool;
    const struct logger *lg;
    char *key; /* STEWARD_PSEUDONYM_KEY or NULL: the database's */
    size_t nparts;
    struct users_part parts[USERS_MAX_PARTS];
};

static const struct db_stmt st_key = {
    "users_key", "SELECT value FROM steward_secrets WHERE name = 'pseudonym_key'", 0};

bool users_id_valid(const char *s)
{
    if (!s)
        return false;
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *end = p + strlen(s);
    size_t chars = 0;
    while (p < end) {
        uint32_t cp;
        size_t n = utf8_decode(p, (size_t)(end - p), &cp);
        if (n == 0 || cp < 0x20 || cp == 0x7F)
            return false;
        p += n;
        if (++chars > USERS_ID_MAX)
            return false;
    }
    return chars >= 1;
}

struct users *users_new(struct pool *pool, const struct logger *lg, const char *pseudonym_key)
{
    struct users *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    if (pseudonym_key && !(u->key = strdup(pseudonym_key))) {
        free(u);
        return NULL;
    }
    u->pool = pool;
    u->lg = lg;
    return u;
}

void users_free(struct users *u)
{
    if (!u)
        return;
    if (u->key) {
        memset(u->key, 0, strlen(u->key));
        free(u->key);
    }
    free(u);
}

int users_add_part(struct users *u, const struct users_part *part)
{
    if (u->nparts >= USERS_MAX_PARTS)
        return -1;
    u->parts[u->nparts++] = *part;
    return 0;
}

int users_pseudonym_with(const char *key, size_t keylen, const char *user_id,
                         char out[USERS_PSEUDONYM_LEN])
{
    unsigned char mac[32];
    if (crypto_hmac_sha256(key, keylen, user_id, strlen(user_id), mac) != 0)
        return -1;
    out[0] = '~';
    crypto_hex(mac, sizeof(mac), out + 1);
    return 0;
}

struct erase_tx {
    struct users *u;
    const char *user_id;
    const char *actor;
    json_t *counts;
    char pseudonym[USERS_PSEUDONYM_LEN];
};

/* The pseudonym, from the configured key or the database's (read in the transaction). */
static int pseudonym_tx(struct pool_conn *c, struct erase_tx *t)
{
    if (t->u->key)
        return users_pseudonym_with(t->u->key, strlen(t->u->key), t->user_id, t->pseudonym) == 0
                   ? ST_OK
                   : ST_EINTERNAL;
    PGresult *r = pool_exec(c, &st_key, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK && PQntuples(r) != 1)
        rc = ST_EINTERNAL;
    if (rc == ST_OK) {
        const char *key = PQgetvalue(r, 0, 0);
        if (users_pseudonym_with(key, strlen(key), t->user_id, t->pseudonym) != 0)
            rc = ST_EINTERNAL;
    }
    PQclear(r);
    return rc;
}

static int erase_fn(struct pool_conn *c, void *arg)
{
    struct erase_tx *t = arg;
    json_decref(t->counts);
    t->counts = json_object();
    if (!t->counts)
        return ST_ENOMEM;
    int rc = pseudonym_tx(c, t);
    for (size_t i = 0; rc == ST_OK && i < t->u->nparts; i++)
        rc = t->u->parts[i].erase_tx(t->u->parts[i].ctx, c, t->user_id, t->pseudonym, t->counts);
    long long audited = 0;
    if (rc == ST_OK)
        rc = audit_erase_user_tx(c, t->user_id, t->pseudonym, &audited);
    if (rc == ST_OK)
        json_object_set_new(t->counts, "audit_rows_pseudonymised", json_integer(audited));
    if (rc != ST_OK)
        return rc;
    char target[8 + USERS_PSEUDONYM_LEN];
    snprintf(target, sizeof(target), "user:%s", t->pseudonym);
    json_t *d = json_pack("{s:O}", "counts", t->counts);
    rc = d ? audit_record_tx(c, t->actor, "user.erase", target, d) : ST_ENOMEM;
    json_decref(d);
    return rc;
}

int users_erase(struct users *u, const char *user_id, const char *actor, json_t **counts)
{
    if (counts)
        *counts = NULL;
    if (!users_id_valid(user_id))
        return ST_EINVALID;
    struct erase_tx t = {.u = u, .user_id = user_id, .actor = actor};
    int rc = pool_tx(u->pool, erase_fn, &t);
    if (rc != ST_OK) {
        json_decref(t.counts);
        return rc;
    }
    for (size_t i = 0; i < u->nparts; i++)
        if (u->parts[i].erased)
            u->parts[i].erased(u->parts[i].ctx, user_id);
    /* the pseudonym only: a user id is user data and stays out of the logs */
    struct log_line l;
    log_begin(&l, u->lg, LOG_INFO, "user erased");
    log_str(&l, "subject", t.pseudonym);
    log_end(&l);
    if (counts)
        *counts = t.counts;
    else
        json_decref(t.counts);
    return ST_OK;
}
