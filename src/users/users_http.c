/* Users over REST: DELETE /v1/users/{user_id} (docs/api.md, "Users and erasure"). */
#include <jansson.h>

#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"
#include "steward/principal.h"
#include "steward/users.h"

static void erase_user(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    const char *user = http_param(req, "user_id");
    if (!user || !users_id_valid(user)) {
        json_t *errs = json_array();
        jv_error(errs, "user_id", "must be 1 to %d printable characters (valid UTF-8)",
                 USERS_ID_MAX);
        http_invalid(resp, errs);
        return;
    }
    int rc = users_erase(ctx, user, req->who ? req->who->name : NULL, NULL);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    resp->status = 204;
}

int users_http_register(struct router *r, struct users *u)
{
    return http_route(r, "DELETE", "/v1/users/{user_id}", AUTH_ADMIN, erase_user, u);
}
