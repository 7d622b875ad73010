/* API keys: random secrets shown once, stored as SHA-256, scoped read/service/admin.
 *
 * Checking a key reads an in-memory snapshot of the active keys that a periodic job
 * reloads every STEWARD_AUTH_CACHE_REFRESH_MS, so requests do not hit the database. A
 * revocation also notifies AUTH_CHANNEL, on which every instance listens and reloads at
 * once. A key missing from the snapshot (created a moment ago, maybe on another
 * instance) is looked up in the database. */
#ifndef STEWARD_AUTH_H
#define STEWARD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "steward/log.h"
#include "steward/pool.h"
#include "steward/principal.h"

#include <jansson.h>
#include <stdint.h>

#define AUTH_SECRET_CAP 64          /* buffer size for a generated secret */
#define AUTH_CHANNEL "steward_keys" /* payload "r|<name>": that key was revoked */

struct auth;
struct listener;
struct sched;
struct router;

/* Creates the cache; call auth_start to load it and schedule its refresh. */
struct auth *auth_new(struct pool *pool, const struct logger *lg, int refresh_ms);
/* Loads the snapshot once, adds its refresh, every refresh_ms, to sc and AUTH_CHANNEL to
 * the listener l (before listener_start; NULL: none), both of which must be stopped
 * before auth_free. Returns ST_*. */
int auth_start(struct auth *a, struct sched *sc, struct listener *l);

/* Called with a key's name for every revocation this instance learns of: its own (after
 * the snapshot no longer holds the key) and every instance's or the CLI's (on the
 * notification). May run more than once per revocation and on the listener thread:
 * keep it short and idempotent. */
typedef void (*auth_revoke_fn)(void *ctx, const char *name);
/* Adds a revocation hook (at most 4); call before auth_start. */
void auth_on_revoke(struct auth *a, auth_revoke_fn fn, void *ctx);
/* THE revocation: revokes the active key named name (audited with actor, notified to
 * every instance in the same transaction), reloads this instance's snapshot and runs
 * the hooks. ST_ENOTFOUND when no active key has that name. */
int auth_revoke(struct auth *a, const char *name, const char *actor);

/* Creates a key (audited as "key.create" by actor); expires_us 0 = never. Writes the
 * secret (shown once) into secret[cap >= AUTH_SECRET_CAP] and, when out is set, the
 * key's row as JSON (without secret). ST_ECONFLICT when an active key has that name. */
int auth_key_create_full(struct pool *pool, const char *name, enum auth_scope scope,
                         int64_t expires_us, const char *actor, char *secret, size_t cap,
                         json_t **out);
/* The same on a's pool (POST /v1/keys). */
int auth_create(struct auth *a, const char *name, enum auth_scope scope, int64_t expires_us,
                const char *actor, char *secret, size_t cap, json_t **out);
/* Revokes (audited by actor, notified) without touching a snapshot: the CLI's path. */
int auth_key_revoke_by(struct pool *pool, const char *name, const char *actor);
/* Every key ever made, newest first (by id), id < before_id (0 = from the newest):
 * {id, name, scope, created_at, last_used_at, revoked_at, expires_at}, never the
 * secret or its hash. *next_before 0 on the last page. */
int auth_keys_list(struct auth *a, int limit, long long before_id, json_t **items,
                   long long *next_before);
/* GET/POST /v1/keys, DELETE /v1/keys/{name} (admin). Does not dereference a. */
int auth_http_register(struct router *r, struct auth *a);
/* Reloads the snapshot from the database once and publishes it; what the periodic job
 * runs every refresh_ms, callable from any thread. Returns ST_*. */
int auth_refresh(struct auth *a);
/* Frees everything; the refresh's scheduler is stopped by then, and no check may be
 * running or start after. */
void auth_free(struct auth *a);
/* The verifier the transports use: auth_check and auth_check_cached on a. */
struct auth_verifier auth_verifier(struct auth *a);

/* Checks a presented secret. ST_OK fills who; ST_ENOTFOUND for an unknown or revoked
 * key; ST_EUNAVAIL when the database was needed and could not answer, or hashing the
 * secret ran out of memory. */
int auth_check(struct auth *a, const char *secret, struct auth_principal *who);
/* The same from the cached snapshot alone, never touching the database (for event
 * loops): *miss is set when the key is not in the snapshot, and only auth_check can
 * tell then. */
int auth_check_cached(struct auth *a, const char *secret, struct auth_principal *who, bool *miss);

/* auth_key_create_full by the CLI (actor "cli", no expiry). */
int auth_key_create(struct pool *pool, const char *name, enum auth_scope scope, char *secret,
                    size_t cap);
/* auth_key_revoke_by the CLI (actor "cli"); ST_ENOTFOUND when no key is active. */
int auth_key_revoke(struct pool *pool, const char *name);
/* Makes sure a key with this secret exists with the given name and scope (for
 * STEWARD_ADMIN_KEY). Idempotent and safe when several instances start together. */
int auth_key_ensure(struct pool *pool, const char *name, const char *secret, enum auth_scope scope);

/* ---- console sessions (the Observation Deck; docs/deck.md) ----
 * A key is exchanged for a session: a random 256-bit id (64 hex digits, the cookie),
 * stored as its SHA-256 with an expiry, and a CSRF token writes must carry. auth_check
 * accepts AUTH_SESSION_PREFIX secrets (principal.h) while the session has not expired
 * and its key is not revoked. */
struct auth_session {
    char id[65];         /* the cookie's value; only known at creation and to its holder */
    char csrf_token[65]; /* X-CSRF-Token of writes */
    char expires_at[32]; /* RFC 3339, UTC */
    enum auth_scope scope;
    char name[AUTH_NAME_MAX * 4 + 1]; /* the key's name */
    int ttl_s;
    bool secure_cookie;
};

/* Session lifetime and whether the cookie is marked Secure (STEWARD_DECK_*). */
void auth_sessions_configure(struct auth *a, int ttl_s, bool secure_cookie);
bool auth_session_secure_cookie(const struct auth *a);
/* A new session for the key who was checked as (out filled). ST_ENOTFOUND when the key
 * was revoked meanwhile. Expired sessions are pruned on the way. */
int auth_session_create(struct auth *a, const struct auth_principal *who, struct auth_session *out);
/* The live session with this cookie value (out filled, id included), or ST_ENOTFOUND. */
int auth_session_get(struct auth *a, const char *id, struct auth_session *out);
/* Ends the session with this cookie value (ST_OK also when there was none). */
int auth_session_end(struct auth *a, const char *id);
/* Registers POST /v1/sessions, GET and DELETE /v1/sessions/current. Does not
 * dereference a. 0, or -1 when the route table is full. */
struct router;
int auth_sessions_http_register(struct router *r, struct auth *a);

/* True when name is a valid key name: 1..64 of [A-Za-z0-9._-]. */
bool auth_name_valid(const char *name);

#endif
