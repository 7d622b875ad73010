#include "steward/utf8.h"

static bool continues(unsigned char c)
{
    return (c & 0xc0) == 0x80;
}

size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    if (n == 0)
        return 0;
    unsigned char c = p[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v;
    unsigned char lo = 0x80, hi = 0xbf; /* the range the second byte may take */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0; /* below: an overlong form of U+0000..U+07FF */
        else if (c == 0xed)
            hi = 0x9f; /* above: the surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xf0)
            lo = 0x90; /* below: an overlong form of U+0000..U+FFFF */
        else if (c == 0xf4)
            hi = 0x8f; /* above: past U+10FFFF */
    } else {
        return 0; /* a continuation byte, 0xc0/0xc1 (overlong only) or 0xf5..0xff */
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (!continues(p[i]))
            return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    *cp = v;
    return len;
}

bool utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode(p + i, n - i, &cp);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

size_t utf8_count(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (!continues((unsigned char)*s))
            n++;
    return n;
}

size_t utf8_prefix(const char *s, size_t max_chars)
{
    size_t i = 0, chars = 0;
    for (; s[i]; i++) {
        if (!continues((unsigned char)s[i])) {
            if (chars == max_chars)
                break;
            chars++;
        }
    }
    return i;
}
