/* The request helpers every HTTP adapter shares (steward/http.h): list parameters. */
#include <jansson.h>
#include <string.h>

#include "steward/http.h"
#include "steward/json.h"
#include "unit.h"

static void set_query(struct http_req *req, const char *limit, const char *cursor)
{
    memset(req, 0, sizeof(*req));
    if (limit) {
        req->query[req->nquery].key = "limit";
        req->query[req->nquery++].value = limit;
    }
    if (cursor) {
        req->query[req->nquery].key = "cursor";
        req->query[req->nquery++].value = cursor;
    }
}

static void list_params_into(void)
{
    struct http_req req;
    int limit = 0;
    const char *cursor = "x";
    json_t *errs = json_array();

    set_query(&req, NULL, NULL);
    http_list_params_into(&req, errs, &limit, &cursor);
    CHECK(limit == 50 && cursor == NULL && json_array_size(errs) == 0);

    set_query(&req, "1", "c0");
    http_list_params_into(&req, errs, &limit, &cursor);
    CHECK(limit == 1 && cursor && strcmp(cursor, "c0") == 0 && json_array_size(errs) == 0);
    set_query(&req, "500", "");
    http_list_params_into(&req, errs, &limit, &cursor);
    CHECK(limit == 500 && cursor == NULL && json_array_size(errs) == 0);

    /* each bad limit adds one error naming the field, after what errs held */
    static const char *const bad[] = {"0", "501", "", "x", "5x", "-1", "99999999999999999999"};
    jv_error(errs, "earlier", "kept");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        set_query(&req, bad[i], NULL);
        http_list_params_into(&req, errs, &limit, &cursor);
    }
    CHECK(json_array_size(errs) == 1 + sizeof(bad) / sizeof(bad[0]));
    CHECK_STR(json_string_value(json_object_get(json_array_get(errs, 0), "field")), "earlier");
    int limits = 0;
    for (size_t i = 1; i < json_array_size(errs); i++)
        limits += strcmp(json_string_value(json_object_get(json_array_get(errs, i), "field")),
                         "limit") == 0;
    CHECK(limits == (int)(sizeof(bad) / sizeof(bad[0])));
    json_decref(errs);
}

static void list_params(void)
{
    struct http_req req;
    struct http_resp resp;
    int limit = 0;
    const char *cursor = NULL;

    memset(&resp, 0, sizeof(resp));
    set_query(&req, "20", "abc");
    CHECK(http_list_params(&req, &resp, &limit, &cursor));
    CHECK(limit == 20 && cursor && strcmp(cursor, "abc") == 0 && resp.body == NULL);

    set_query(&req, "0", NULL);
    CHECK(!http_list_params(&req, &resp, &limit, &cursor));
    CHECK(resp.status == 422);
    json_t *errs = json_object_get(resp.body, "errors");
    CHECK(json_array_size(errs) == 1);
    CHECK_STR(json_string_value(json_object_get(json_array_get(errs, 0), "field")), "limit");
    json_decref(resp.body);
}

int main(void)
{
    list_params_into();
    list_params();
    return unit_done();
}
