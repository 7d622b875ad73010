/* Users: the one user-id rule every capability applies, and erasure
 * (DELETE /v1/users/{user_id}, docs/api.md "Users and erasure").
 *
 * The id rule is a floor: any capability may call users_id_valid. Erasure runs one
 * transaction that asks every part (a capability holding something about users, wired
 * by app.c) to erase its share, pseudonymises the user's audit rows, and records the
 * erasure itself in the audit trail; after the commit each part's erased hook runs. */
#ifndef STEWARD_USERS_H
#define STEWARD_USERS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "steward/log.h"
#include "steward/pool.h"

struct router;
struct users;

#define USERS_ID_MAX 200       /* characters of a user id */
#define USERS_PSEUDONYM_LEN 66 /* "~" + 64 hex digits + NUL */
#define USERS_MAX_PARTS 8

/* The one rule: 1..200 characters of valid UTF-8 with no C0 control character and no
 * DEL (the looser of the rules bonds and scouts had, so no stored id becomes invalid). */
bool users_id_valid(const char *s);

/* One capability's share of an erasure. erase_tx runs inside the erasure's transaction
 * on c: it removes the user's rows, or replaces the id by pseudonym where a row must
 * stay (so counts survive), and adds {"<kind>": rows} to counts. Anything but ST_OK
 * rolls the whole erasure back. erased (may be NULL) runs after the commit and never
 * fails. */
struct users_part {
    int (*erase_tx)(void *ctx, struct pool_conn *c, const char *user_id, const char *pseudonym,
                    json_t *counts);
    void (*erased)(void *ctx, const char *user_id);
    void *ctx;
};

/* pseudonym_key: STEWARD_PSEUDONYM_KEY (copied), or NULL to use the key stored in the
 * database (steward_secrets.pseudonym_key, made once by migration 0010), so every
 * instance computes the same pseudonym. NULL when out of memory. */
struct users *users_new(struct pool *pool, const struct logger *lg, const char *pseudonym_key);
void users_free(struct users *u);
/* Adds a part (copied); call before serving. 0, or -1 when USERS_MAX_PARTS are taken. */
int users_add_part(struct users *u, const struct users_part *part);

/* The pseudonym of user_id under key: "~" + hex HMAC-SHA256 into out. 0 or -1. */
int users_pseudonym_with(const char *key, size_t keylen, const char *user_id,
                         char out[USERS_PSEUDONYM_LEN]);

/* Erases user_id (valid by users_id_valid) in one transaction, audited as "user.erase"
 * by actor with the pseudonymised target and the counts. ST_OK also when nothing was
 * stored; *counts (may be NULL) gets the counts object (new reference). */
int users_erase(struct users *u, const char *user_id, const char *actor, json_t **counts);

/* DELETE /v1/users/{user_id} (admin). Does not dereference u. 0 or -1. */
int users_http_register(struct router *r, struct users *u);

#endif
