#include <string.h>

#include "steward/router.h"
#include "unit.h"

static int h1, h2, h3, h4;

int main(void)
{
    struct router r;
    router_init(&r);
    CHECK(router_add(&r, "GET", "/v1/lessons/{id}", 1, &h1, NULL) == 0);
    CHECK(router_add(&r, "GET", "/v1/lessons/snapshot", 1, &h2, NULL) == 1);
    CHECK(router_add(&r, "PATCH", "/v1/lessons/{id}", 3, &h3, NULL) == 2);
    CHECK(router_add(&r, "GET", "/v1/bonds/{user_id}/events", 1, &h4, NULL) == 3);
    CHECK(router_add(&r, "GET", "no-slash", 1, &h4, NULL) == -1);

    struct route_match m;
    router_match(&r, "GET", "/v1/lessons/42", &m);
    CHECK(m.route && m.route->handler == &h1);
    CHECK(m.nparams == 1);
    CHECK_STR(m.params[0].name, "id");
    CHECK_STR(m.params[0].value, "42");

    /* a literal segment beats a parameter */
    router_match(&r, "GET", "/v1/lessons/snapshot", &m);
    CHECK(m.route && m.route->handler == &h2);

    /* percent-decoding of parameters, including an encoded slash */
    router_match(&r, "GET", "/v1/bonds/a%2Fb%20c/events", &m);
    CHECK(m.route && m.route->handler == &h4);
    CHECK_STR(m.params[0].value, "a/b c");

    /* bad escapes and NUL are rejected, not matched */
    router_match(&r, "GET", "/v1/bonds/a%zz/events", &m);
    CHECK(!m.route && m.bad_param);
    router_match(&r, "GET", "/v1/bonds/a%00/events", &m);
    CHECK(!m.route && m.bad_param);
    router_match(&r, "GET", "/v1/bonds/a%2/events", &m);
    CHECK(!m.route && m.bad_param);

    /* overlong parameter */
    char path[2048] = "/v1/lessons/";
    memset(path + strlen(path), 'x', 600);
    router_match(&r, "GET", path, &m);
    CHECK(!m.route && m.bad_param);

    /* wrong method: 405 with Allow */
    router_match(&r, "DELETE", "/v1/lessons/42", &m);
    CHECK(!m.route && m.path_known);
    CHECK(strstr(m.allow, "GET") && strstr(m.allow, "PATCH"));

    /* unknown paths, empty parameter, trailing slash */
    router_match(&r, "GET", "/v1/nothing", &m);
    CHECK(!m.route && !m.path_known);
    router_match(&r, "GET", "/v1/lessons/", &m);
    CHECK(!m.route);
    router_match(&r, "GET", "/v1/bonds//events", &m);
    CHECK(!m.route);
    router_match(&r, "GET", "/v1/lessons/42/", &m);
    CHECK(!m.route);

    /* a literal segment matches only itself: not a prefix, not a longer word */
    router_match(&r, "GET", "/v1/lessons/snapsho", &m);
    CHECK(m.route && m.route->handler == &h1 && strcmp(m.params[0].value, "snapsho") == 0);
    router_match(&r, "GET", "/v1/lessons/snapshotx", &m);
    CHECK(m.route && m.route->handler == &h1 && strcmp(m.params[0].value, "snapshotx") == 0);
    router_match(&r, "GET", "/v1/lesson/42", &m);
    CHECK(!m.route && !m.path_known);
    router_match(&r, "GET", "/v1/lessonsx/42", &m);
    CHECK(!m.route && !m.path_known);
    router_match(&r, "GET", "/v1/lessons", &m);
    CHECK(!m.route && !m.path_known);
    router_match(&r, "GET", "//v1/lessons/42", &m);
    CHECK(!m.route && !m.path_known);
    router_match(&r, "GET", "/v1/bonds/u1/event", &m);
    CHECK(!m.route && !m.path_known);
    router_match(&r, "GET", "/v1/bonds/u1/events/x", &m);
    CHECK(!m.route && !m.path_known);

    char out[8];
    CHECK(router_decode("abc", 3, out, sizeof(out)) == 3);
    CHECK(router_decode("abcdefgh", 8, out, sizeof(out)) == -1);
    CHECK(router_decode("%41", 3, out, sizeof(out)) == 1 && out[0] == 'A');
    return unit_done();
}
