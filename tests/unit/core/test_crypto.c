#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "steward/crypto.h"
#include "steward/principal.h"
#include "unit.h"

struct md_worker {
    const struct crypto_md *md;
    int id;
    int mismatches;
};

/* Hashes 5,000 distinct inputs with the shared fetched digest and compares each with
 * the one-shot function. */
static void *md_work(void *arg)
{
    struct md_worker *w = arg;
    for (int i = 0; i < 5000; i++) {
        char in[64];
        int n = snprintf(in, sizeof(in), "stw_%d_%d_%0*d", w->id, i, i % 40, 0);
        unsigned char a[32], b[32];
        crypto_sha256(in, (size_t)n, a);
        if (crypto_md_digest(w->md, in, (size_t)n, b) != 0 || memcmp(a, b, 32) != 0)
            w->mismatches++;
    }
    return NULL;
}

static void check_md(void)
{
    struct crypto_md *md = crypto_md_sha256();
    CHECK(md != NULL);
    if (!md)
        return;
    unsigned char out[32];
    char hex[65];
    CHECK(crypto_md_digest(md, "abc", 3, out) == 0);
    crypto_hex(out, sizeof(out), hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(crypto_md_digest(md, "", 0, out) == 0);
    crypto_hex(out, sizeof(out), hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* one digest shared by several threads at once */
    struct md_worker w[4];
    pthread_t t[4];
    int started = 0;
    for (int i = 0; i < 4; i++) {
        w[i] = (struct md_worker){md, i, 0};
        if (pthread_create(&t[i], NULL, md_work, &w[i]) == 0)
            started++;
    }
    int bad = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(t[i], NULL);
        bad += w[i].mismatches;
    }
    CHECK(started == 4 && bad == 0);
    crypto_md_free(md);
    crypto_md_free(NULL);
}

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
    check_md();
    return unit_done();
}
