/* HTTP adapter of the Observation Deck: the console's pages and files under /deck/, with
 * the security headers every deck response carries, and GET /v1/overview. */
#include <stdlib.h>
#include <string.h>

#include "steward/deck.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/users.h"

#define DECK_CSP                                                                                   \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

static void security_headers(struct http_resp *resp)
{
    http_header(resp, "Content-Security-Policy", "%s", DECK_CSP);
    http_header(resp, "X-Content-Type-Options", "nosniff");
    http_header(resp, "Referrer-Policy", "no-referrer");
}

/* Answers a console file; the server turns a matching If-None-Match into 304. */
static void serve(struct deck *d, const char *name, struct http_resp *resp)
{
    struct deck_file f;
    unsigned char *owned = NULL;
    int rc = deck_file_get(d, name, &f, &owned);
    if (rc != ST_OK) {
        free(owned);
        http_problem(resp, rc == ST_ENOTFOUND || rc == ST_EDISABLED ? 404 : 500,
                     rc == ST_EDISABLED ? "the console is turned off (STEWARD_DECK)"
                                        : "no such console file");
        security_headers(resp);
        return;
    }
    char *copy = malloc(f.len ? f.len : 1);
    if (!copy) {
        free(owned);
        http_error(resp, ST_ENOMEM, NULL);
        return;
    }
    memcpy(copy, f.data, f.len);
    resp->status = 200;
    resp->text = copy;
    resp->text_len = f.len;
    resp->content_type = f.type;
    http_header(resp, "ETag", "%s", f.etag);
    /* revalidate every time: names carry no version, and a 304 costs one round trip */
    http_header(resp, "Cache-Control", "no-cache");
    security_headers(resp);
    free(owned);
}

static void page(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    serve(ctx, "index.html", resp);
}

/* /deck/users/{user_id}: the page, for an id that could name a user (else 404). */
static void user_page(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *id = http_param(req, "user_id");
    if (!id || !users_id_valid(id)) {
        http_problem(resp, 404, "no user can have this id");
        security_headers(resp);
        return;
    }
    serve(ctx, "index.html", resp);
}

/* /deck/{name}: a file, or one of the views' deep links (the page renders the view). */
static void file_or_view(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const views[] = {"bonds", "lessons", "audit", NULL};
    const char *name = http_param(req, "name");
    for (int i = 0; name && views[i]; i++)
        if (strcmp(name, views[i]) == 0) {
            serve(ctx, "index.html", resp);
            return;
        }
    serve(ctx, name ? name : "", resp);
}

static void overview(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    char *json = NULL;
    size_t len = 0;
    int rc = deck_overview(ctx, &json, &len);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    resp->status = 200;
    resp->text = json;
    resp->text_len = len;
    resp->content_type = "application/json";
}

int deck_http_register(struct router *r, struct deck *d)
{
    int rc = 0;
    rc |= http_route_nonblocking(r, "GET", "/deck", AUTH_NONE, page, d);
    rc |= http_route_nonblocking(r, "GET", "/deck/", AUTH_NONE, page, d);
    rc |= http_route_nonblocking(r, "GET", "/deck/{name}", AUTH_NONE, file_or_view, d);
    rc |= http_route_nonblocking(r, "GET", "/deck/users/{user_id}", AUTH_NONE, user_page, d);
    rc |= http_route(r, "GET", "/v1/overview", AUTH_READ, overview, d);
    return rc;
}
