#include "steward/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct crypto_md {
    EVP_MD *md;
    size_t size;
};

int crypto_random(void *buf, size_t len)
{
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

void crypto_sha256(const void *data, size_t len, unsigned char *out)
{
    SHA256(data, len, out);
}

void crypto_hex(const unsigned char *in, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * len] = '\0';
}

void crypto_sha256_hex(const void *data, size_t len, char *out)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    crypto_hex(md, sizeof(md), out);
}

struct crypto_md *crypto_md_sha256(void)
{
    struct crypto_md *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!m->md) {
        free(m);
        return NULL;
    }
    m->size = (size_t)EVP_MD_get_size(m->md);
    return m;
}

void crypto_md_free(struct crypto_md *m)
{
    if (!m)
        return;
    EVP_MD_free(m->md);
    free(m);
}

int crypto_md_digest(const struct crypto_md *m, const void *data, size_t len,
                     unsigned char *out)
{
    /* EVP_Digest with a fetched (provider) EVP_MD goes straight to its implementation;
     * only the legacy EVP_sha256() object makes it fetch again. */
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, m->md, NULL) != 1 || n != m->size) {
        memset(out, 0, m->size);
        return -1;
    }
    return 0;
}

bool crypto_equal(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

int crypto_token(char *out, size_t cap, const char *prefix, size_t nbytes)
{
    unsigned char raw[64];
    size_t plen = strlen(prefix);
    if (nbytes > sizeof(raw) || plen + 2 * nbytes + 1 > cap)
        return -1;
    if (crypto_random(raw, nbytes) != 0)
        return -1;
    memcpy(out, prefix, plen);
    crypto_hex(raw, nbytes, out + plen);
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

int crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                       unsigned char *out)
{
    unsigned int n = 0;
    if (!HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &n) || n != 32) {
        memset(out, 0, 32);
        return -1;
    }
    return 0;
}
