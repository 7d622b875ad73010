/* Hashing, secure random bytes and constant-time comparison (OpenSSL libcrypto). */
#ifndef STEWARD_CRYPTO_H
#define STEWARD_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

/* Fills buf with len cryptographically secure random bytes. Returns 0 or -1. */
int crypto_random(void *buf, size_t len);

/* SHA-256 of data into out[32]. */
void crypto_sha256(const void *data, size_t len, unsigned char *out);
/* Lowercase hex SHA-256 of data into out (65 bytes with the NUL). */
void crypto_sha256_hex(const void *data, size_t len, char *out);

/* A SHA-256 implementation fetched from OpenSSL once. The one-shot calls above look the
 * implementation up in OpenSSL 3's provider store on every call (a lock, a property
 * query and reference counting: about 60% of the cost of hashing an API key); hot
 * paths hold one of these instead. It is immutable once created, so every thread may
 * use the same one at once. */
struct crypto_md;

/* Fetches SHA-256; NULL when OpenSSL cannot provide it or memory ran out. */
struct crypto_md *crypto_md_sha256(void);
void crypto_md_free(struct crypto_md *md);
/* Digest of data into out (32 bytes for SHA-256). Returns 0, or -1 when OpenSSL
 * failed (out of memory); out is then zeroed. */
int crypto_md_digest(const struct crypto_md *md, const void *data, size_t len,
                     unsigned char *out);

/* HMAC-SHA256 of data under key into out[32]. Returns 0, or -1 when OpenSSL failed. */
int crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                       unsigned char *out);
/* Compares len bytes in time independent of their content. */
bool crypto_equal(const void *a, const void *b, size_t len);

/* Writes prefix followed by nbytes random bytes as lowercase hex into out.
 * Returns 0, or -1 when out is too small or randomness failed. */
int crypto_token(char *out, size_t cap, const char *prefix, size_t nbytes);

/* Lowercase hex of len bytes into out (2 * len + 1 bytes). */
void crypto_hex(const unsigned char *in, size_t len, char *out);

#endif
