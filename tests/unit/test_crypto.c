#include <string.h>

#include "steward/auth.h"
#include "steward/crypto.h"
#include "unit.h"

int main(void)
{
    char hex[65];
    crypto_sha256_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(crypto_equal("abcd", "abcd", 4));
    CHECK(!crypto_equal("abcd", "abce", 4));
    char t1[64], t2[64];
    CHECK(crypto_token(t1, sizeof(t1), "stw_", 24) == 0);
    CHECK(crypto_token(t2, sizeof(t2), "stw_", 24) == 0);
    CHECK(strlen(t1) == 4 + 48 && strncmp(t1, "stw_", 4) == 0);
    CHECK(strcmp(t1, t2) != 0);
    CHECK(crypto_token(t1, 10, "stw_", 24) == -1);
    enum auth_scope s;
    CHECK(auth_scope_parse("admin", &s) == 0 && s == AUTH_ADMIN);
    CHECK(auth_scope_parse("root", &s) == -1);
    CHECK(auth_name_valid("ci-worker.1") && !auth_name_valid("") && !auth_name_valid("a b"));
    return unit_done();
}
