/* The one user-id rule and the pseudonym of src/users. */
#include <stdio.h>
#include <string.h>

#include "steward/users.h"
#include "unit.h"

static void check_id_rule(void)
{
    CHECK(users_id_valid("user-42"));
    CHECK(users_id_valid("\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80"));
    CHECK(users_id_valid("\xc2\x85")); /* C1: scouts stored these, so they stay valid */
    CHECK(!users_id_valid(""));
    CHECK(!users_id_valid(NULL));
    CHECK(!users_id_valid("tab\there"));
    CHECK(!users_id_valid("del\x7f"));
    CHECK(!users_id_valid("\xc3"));         /* truncated */
    CHECK(!users_id_valid("\xed\xa0\x80")); /* surrogate */
    CHECK(!users_id_valid("\xc0\xaf"));     /* overlong */
    char id[4 * USERS_ID_MAX + 8];
    memset(id, 'x', USERS_ID_MAX);
    id[USERS_ID_MAX] = '\0';
    CHECK(users_id_valid(id)); /* 200 characters: the limit both capabilities share */
    id[USERS_ID_MAX] = 'x';
    id[USERS_ID_MAX + 1] = '\0';
    CHECK(!users_id_valid(id));
    /* characters, not bytes: 200 two-byte characters */
    for (int i = 0; i < USERS_ID_MAX; i++)
        memcpy(id + 2 * i, "\xc3\xa9", 2);
    id[2 * USERS_ID_MAX] = '\0';
    CHECK(users_id_valid(id));
}

static void check_pseudonym(void)
{
    /* RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" */
    char out[USERS_PSEUDONYM_LEN];
    CHECK(users_pseudonym_with("Jefe", 4, "what do ya want for nothing?", out) == 0);
    CHECK_STR(out, "~5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    char other[USERS_PSEUDONYM_LEN];
    CHECK(users_pseudonym_with("Jefe!", 5, "what do ya want for nothing?", other) == 0);
    CHECK(strcmp(out, other) != 0);
}

int main(void)
{
    check_id_rule();
    check_pseudonym();
    return unit_done();
}
