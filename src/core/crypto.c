#include "steward/crypto.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

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
