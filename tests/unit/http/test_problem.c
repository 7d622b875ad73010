#include <string.h>

#include "steward/err.h"
#include "steward/http.h"
#include "steward/problem.h"
#include "unit.h"

int main(void)
{
    json_t *p = problem_new(404, NULL, "no such lesson");
    CHECK_STR(json_string_value(json_object_get(p, "type")), "/problems/not-found");
    CHECK_STR(json_string_value(json_object_get(p, "title")), "Not Found");
    CHECK(json_integer_value(json_object_get(p, "status")) == 404);
    CHECK_STR(json_string_value(json_object_get(p, "detail")), "no such lesson");
    json_decref(p);
    p = problem_new(429, "quota-exceeded", NULL);
    CHECK_STR(json_string_value(json_object_get(p, "type")), "/problems/quota-exceeded");
    CHECK(json_string_value(json_object_get(p, "detail")) != NULL);
    json_decref(p);
    CHECK_STR(problem_slug(422), "validation-failed");
    CHECK_STR(problem_slug(415), "unsupported-media-type");

    struct http_resp resp = {0};
    json_t *errs = json_array();
    json_array_append_new(errs, json_pack("{s:s,s:s}", "field", "a", "message", "bad"));
    http_invalid(&resp, errs);
    CHECK(resp.status == 422);
    CHECK(json_array_size(json_object_get(resp.body, "errors")) == 1);
    json_decref(resp.body);

    memset(&resp, 0, sizeof(resp));
    http_error(&resp, ST_EUNAVAIL, NULL);
    CHECK(resp.status == 503 && resp.nheaders == 1);
    CHECK_STR(resp.headers[0].name, "Retry-After");
    json_decref(resp.body);
    memset(&resp, 0, sizeof(resp));
    http_error(&resp, ST_EINTERNAL, NULL);
    CHECK(resp.status == 500);
    json_decref(resp.body);
    return unit_done();
}
