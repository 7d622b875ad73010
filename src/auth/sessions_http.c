/* HTTP adapter of console sessions (docs/deck.md#signing-in): exchanges an API key for
 * a session cookie, tells the console who it is signed in as, and signs out. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "steward/auth.h"
#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"

static json_t *session_json(const struct auth_session *s)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "name", s->name, "scope", auth_scope_name(s->scope),
                     "csrf_token", s->csrf_token, "expires_at", s->expires_at);
}

/* HttpOnly: the page's scripts never see it; SameSite=Strict: no other site's page
 * sends it; Path=/: the console and the /v1 routes it calls. */
static void set_cookie(struct http_resp *resp, const char *id, int max_age, bool secure)
{
    http_header(resp, "Set-Cookie", "%s=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%d%s",
                AUTH_SESSION_COOKIE, id, max_age, secure ? "; Secure" : "");
}

static void sign_in(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"api_key", NULL};
    if (!http_body_object(req, resp, true))
        return;
    json_t *errs = json_array();
    const char *key = NULL;
    jv_unknown_fields(req->body, allowed, "", errs);
    jv_string(req->body, "api_key", "", true, 1, 200, &key, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    struct auth_principal who = {0};
    int rc = strchr(key, ':') ? ST_ENOTFOUND : auth_check(ctx, key, &who);
    if (rc == ST_ENOTFOUND) {
        http_problem(resp, 401, "unknown or revoked API key");
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    if (who.scope != AUTH_READ && who.scope != AUTH_ADMIN) {
        http_problem(resp, 403, "the console signs in with a read or admin key");
        return;
    }
    struct auth_session s;
    rc = auth_session_create(ctx, &who, &s);
    if (rc == ST_ENOTFOUND) {
        http_problem(resp, 401, "unknown or revoked API key");
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    http_json(resp, 201, session_json(&s));
    set_cookie(resp, s.id, s.ttl_s, s.secure_cookie);
}

static void current(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    char id[80];
    struct auth_session s;
    if (!req->who->session || !http_req_cookie(req, AUTH_SESSION_COOKIE, id, sizeof(id))) {
        http_problem(resp, 404, "this request did not come with a console session");
        return;
    }
    int rc = auth_session_get(ctx, id, &s);
    if (rc != ST_OK) {
        http_error(resp, rc, rc == ST_ENOTFOUND ? "no such session" : NULL);
        return;
    }
    http_json(resp, 200, session_json(&s));
}

/* Open, so that any session can end itself; the session's own CSRF token stands in for
 * the server's cookie-write check (no other site can send the SameSite=Strict cookie,
 * and none can read the token). */
static void sign_out(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    char id[80];
    struct auth_session s;
    if (!http_req_cookie(req, AUTH_SESSION_COOKIE, id, sizeof(id))) {
        http_problem(resp, 404, "this request did not come with a console session");
        return;
    }
    int rc = auth_session_get(ctx, id, &s);
    if (rc == ST_ENOTFOUND) {
        http_problem(resp, 404, "no such session");
        return;
    }
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    const char *csrf = http_req_header(req, "X-CSRF-Token");
    if (!csrf || strlen(csrf) != 64 || !crypto_equal(csrf, s.csrf_token, 64)) {
        http_problem(resp, 403, "signing out needs the session's X-CSRF-Token");
        return;
    }
    rc = auth_session_end(ctx, id);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    resp->status = 204;
    set_cookie(resp, "", 0, auth_session_secure_cookie(ctx));
}

int auth_sessions_http_register(struct router *r, struct auth *a)
{
    int rc = 0;
    rc |= http_route(r, "POST", "/v1/sessions", AUTH_NONE, sign_in, a);
    rc |= http_route(r, "GET", "/v1/sessions/current", AUTH_READ, current, a);
    rc |= http_route(r, "DELETE", "/v1/sessions/current", AUTH_NONE, sign_out, a);
    return rc;
}
