/* UTF-8 as RFC 3629 has it: no overlong forms, no UTF-16 surrogates (U+D800..U+DFFF),
 * nothing above U+10FFFF. */
#ifndef STEWARD_UTF8_H
#define STEWARD_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decodes the sequence that starts p[0..n): returns its length (1 to 4) and sets *cp,
 * or returns 0 when it is not well formed or runs past n (n == 0 too). */
size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp);
/* Whether p[0..n) is well-formed UTF-8 throughout (a NUL byte is a character). */
bool utf8_valid(const unsigned char *p, size_t n);
/* Characters of the NUL-terminated string s, taken to be well formed: counts the bytes
 * that do not continue a sequence. */
size_t utf8_count(const char *s);
/* Bytes of the first max_chars characters of s (all of s when it has fewer), by the
 * same count. */
size_t utf8_prefix(const char *s, size_t max_chars);

#endif
