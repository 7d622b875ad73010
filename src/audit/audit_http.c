/* The audit trail over REST: GET /v1/audit (docs/api.md, "Audit trail"). */
#include <stdlib.h>
#include <string.h>

#include "steward/audit.h"
#include "steward/err.h"
#include "steward/http.h"
#include "steward/json.h"
#include "steward/principal.h"

/* A filter value: NULL when absent; an error in errs when present but not 1..max
 * printable characters. */
static const char *text_filter(const struct http_req *req, const char *name, size_t max,
                               json_t *errs)
{
    const char *v = http_query(req, name);
    if (v && !jv_is_printable_id(v, max)) {
        jv_error(errs, name, "must be 1 to %zu printable characters", max);
        return NULL;
    }
    return v;
}

static void list_audit(void *ctx, const struct http_req *req, struct http_resp *resp)
{
    static const char *const allowed[] = {"actor", "action", "target", "since",
                                          "limit", "cursor", NULL};
    int limit;
    const char *cursor;
    json_t *errs = json_array();
    http_list_params_into(req, errs, &limit, &cursor);
    http_unknown_query(req, allowed, errs);
    struct audit_filter f = {0};
    f.actor = text_filter(req, "actor", AUDIT_ACTOR_MAX, errs);
    f.target = text_filter(req, "target", AUDIT_TARGET_MAX, errs);
    f.action = http_query(req, "action");
    if (f.action && !audit_action_valid(f.action)) {
        jv_error(errs, "action", "must be 1 to 64 of a-z 0-9 _ . starting with a letter");
        f.action = NULL;
    }
    const char *since = http_query(req, "since");
    if (since) {
        f.has_since = jtime_parse(since, &f.since_us) == 0;
        if (!f.has_since)
            jv_error(errs, "since", "must be an RFC 3339 time");
    }
    int64_t before = http_id_cursor(cursor, errs);
    if (json_array_size(errs) > 0) {
        http_invalid(resp, errs);
        return;
    }
    json_decref(errs);
    json_t *items = NULL;
    long long next = 0;
    int rc = audit_list(ctx, &f, limit, before, &items, &next);
    if (rc != ST_OK) {
        http_error(resp, rc, NULL);
        return;
    }
    json_t *nc = http_next_cursor(next);
    http_json(resp, 200, json_pack("{s:o, s:o}", "items", items, "next_cursor", nc));
}

int audit_http_register(struct router *r, struct audit *a)
{
    return http_route(r, "GET", "/v1/audit", AUTH_ADMIN, list_audit, a);
}
