/* Who is calling: the scope an API key grants, and the interface through which the
 * transports ask whether a presented secret is a key. The transports know only this
 * header; src/auth implements the interface and src/app hands it to them. */
#ifndef STEWARD_PRINCIPAL_H
#define STEWARD_PRINCIPAL_H

#include <stdbool.h>

enum auth_scope { AUTH_NONE = 0, AUTH_READ = 1, AUTH_SERVICE = 2, AUTH_ADMIN = 3 };

#define AUTH_NAME_MAX 64

struct auth_principal {
    enum auth_scope scope;
    long long key_id;
    char name[AUTH_NAME_MAX * 4 + 1];
    /* Set when the caller came with a console session cookie instead of a bearer key:
     * then a write needs csrf_ok (the request's X-CSRF-Token is the session's). */
    bool session;
    bool csrf_ok;
};

/* A console session is presented to the verifier as one secret:
 * AUTH_SESSION_PREFIX "<64 hex of the cookie>:<X-CSRF-Token or empty>". No API key
 * contains ':', so the two never collide. */
#define AUTH_SESSION_PREFIX "session:"
#define AUTH_SESSION_COOKIE "steward_session"
#define AUTH_SESSION_SECRET_MAX 200

/* "read", "service", "admin" to a scope: 0, or -1 for anything else. */
int auth_scope_parse(const char *s, enum auth_scope *out);
/* The scope's name; "none" for AUTH_NONE. */
const char *auth_scope_name(enum auth_scope s);

/* Checks presented secrets (an API key, or a session as above). check may wait (it may ask the database); check_cached never
 * waits and sets *miss when only check can tell. Both return ST_OK (who filled),
 * ST_ENOTFOUND for an unknown or revoked key, or ST_EUNAVAIL. */
struct auth_verifier {
    void *ctx;
    int (*check)(void *ctx, const char *secret, struct auth_principal *who);
    int (*check_cached)(void *ctx, const char *secret, struct auth_principal *who, bool *miss);
};

#endif
