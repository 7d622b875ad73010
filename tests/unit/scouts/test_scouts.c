/* The pure helpers of the scouts delivery pass (src/scouts/scouts_int.h). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "scouts/scouts_int.h"
#include "unit.h"

static const char ids[3][SCOUTS_ID_LEN + 1] = {
    "0b7e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b",
    "1c8f3d2b-4a5e-4f60-9bac-1d2e3f4a5b6c",
    "2d904e3c-5b6f-4071-acbd-2e3f4a5b6c7d",
};

static void windows_json(void)
{
    /* no session: an empty array */
    char *t = scouts_windows_json(NULL, 0);
    CHECK(t && strcmp(t, "[]") == 0);
    free(t);

    /* three sessions: two ids, none, one; in order, as valid JSON */
    struct scouts_window w[3] = {{ids, 2}, {NULL, 0}, {ids + 2, 1}};
    t = scouts_windows_json(w, 3);
    CHECK(t != NULL);
    json_error_t err;
    json_t *v = t ? json_loads(t, 0, &err) : NULL;
    CHECK(v && json_is_array(v) && json_array_size(v) == 3);
    CHECK(json_array_size(json_array_get(v, 0)) == 2);
    CHECK_STR(json_string_value(json_array_get(json_array_get(v, 0), 0)), ids[0]);
    CHECK_STR(json_string_value(json_array_get(json_array_get(v, 0), 1)), ids[1]);
    CHECK(json_is_array(json_array_get(v, 1)) && json_array_size(json_array_get(v, 1)) == 0);
    CHECK(json_array_size(json_array_get(v, 2)) == 1);
    CHECK_STR(json_string_value(json_array_get(json_array_get(v, 2), 0)), ids[2]);
    json_decref(v);
    free(t);

    /* one session holding a full window of 32 (the default in-flight window) */
    static char many[32][SCOUTS_ID_LEN + 1];
    for (int i = 0; i < 32; i++)
        memcpy(many[i], ids[i % 3], sizeof(many[i]));
    struct scouts_window one = {(const char(*)[SCOUTS_ID_LEN + 1])many, 32};
    t = scouts_windows_json(&one, 1);
    CHECK(t && strlen(t) == 2 + 32 * (SCOUTS_ID_LEN + 2) + 31 + 2);
    v = t ? json_loads(t, 0, &err) : NULL;
    CHECK(v && json_array_size(json_array_get(v, 0)) == 32);
    json_decref(v);
    free(t);
}

static void parse_sessions(void)
{
    int *v;
    size_t n;
    CHECK(scouts_parse_sessions("1", 1, &v, &n) == 0 && n == 1 && v[0] == 0);
    free(v);
    CHECK(scouts_parse_sessions("1,3,12", 12, &v, &n) == 0 && n == 3);
    CHECK(v && v[0] == 0 && v[1] == 2 && v[2] == 11);
    free(v);
    /* NULL (sent to nobody) and empty: no sessions */
    CHECK(scouts_parse_sessions(NULL, 4, &v, &n) == 0 && n == 0 && v == NULL);
    CHECK(scouts_parse_sessions("", 4, &v, &n) == 0 && n == 0 && v == NULL);
    /* out of range, malformed */
    static const char *const bad[] = {"0", "5", "1,5", "-1", "+1", " 1", "1,", ",1", "1,,2",
                                      "a", "1a", "99999999999999999999999", NULL};
    for (int i = 0; bad[i]; i++) {
        v = (int *)&n; /* must come back NULL */
        CHECK(scouts_parse_sessions(bad[i], 4, &v, &n) == -1 && v == NULL && n == 0);
    }
}

static void users_json(void)
{
    char *t = scouts_users_json(NULL, NULL, 0);
    CHECK(t && strcmp(t, "[]") == 0);
    free(t);
    /* user ids are escaped, windows taken as they are, in order */
    const char *users[] = {"alice", "b\"o\\b\n", "carol"};
    const char *wins[] = {"[[]]", "[[\"0b7e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b\"],[]]", "[]"};
    t = scouts_users_json(users, wins, 3);
    CHECK(t != NULL);
    json_error_t err;
    json_t *v = t ? json_loads(t, 0, &err) : NULL;
    CHECK(v && json_is_array(v) && json_array_size(v) == 3);
    for (size_t i = 0; v && i < 3; i++) {
        json_t *e = json_array_get(v, i);
        CHECK(json_object_size(e) == 2);
        CHECK_STR(json_string_value(json_object_get(e, "u")), users[i]);
        json_t *w = json_loads(wins[i], 0, &err);
        CHECK(json_equal(json_object_get(e, "s"), w));
        json_decref(w);
    }
    json_decref(v);
    free(t);
}

static void pg_array(void)
{
    char *t = scouts_pg_array(NULL, 0);
    CHECK(t && strcmp(t, "{}") == 0);
    free(t);
    const char *items[] = {ids[0], ids[1], ids[0]};
    t = scouts_pg_array(items, 3);
    char want[200];
    snprintf(want, sizeof(want), "{%s,%s,%s}", ids[0], ids[1], ids[0]);
    CHECK(t && strcmp(t, want) == 0);
    free(t);
}

static void hello_mark(void)
{
    /* device 0 twice with the right token, device 0 with a wrong one, device 1 unknown */
    struct scouts_hello_check h[4] = {{0}};
    const char *dev[] = {ids[0], ids[0], ids[0], ids[1]};
    const char *dig[] = {"aa", "bb", "aa", "aa"};
    for (int i = 0; i < 4; i++) {
        h[i].device_id = dev[i];
        snprintf(h[i].hash, sizeof(h[i].hash), "%s", dig[i]);
    }
    scouts_hello_mark(h, 4, ids[0], "aa", "user-1", 1234567);
    CHECK(h[0].ok && h[2].ok && !h[1].ok && !h[3].ok);
    CHECK_STR(h[0].user, "user-1");
    CHECK_STR(h[2].user, "user-1");
    CHECK(h[0].seen == 1234567 && h[2].seen == 1234567 && h[1].seen == 0);
    CHECK(h[1].user[0] == '\0' && h[3].user[0] == '\0');
    /* a row naming no hello changes nothing */
    scouts_hello_mark(h, 4, ids[2], "aa", "user-2", 7);
    CHECK(!h[1].ok && !h[3].ok);
}

int main(void)
{
    windows_json();
    parse_sessions();
    users_json();
    pg_array();
    hello_mark();
    return unit_done();
}
