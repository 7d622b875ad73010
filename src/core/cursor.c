#include "steward/cursor.h"

#include <stdio.h>
#include <string.h>

void cursor_encode(char *out, int64_t a, int64_t b)
{
    snprintf(out, CURSOR_LEN, "c%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
}

static int hex16(const char *s, int64_t *out)
{
    unsigned long long v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return -1;
        v = (v << 4) | (unsigned)d;
    }
    *out = (int64_t)v;
    return 0;
}

int cursor_decode(const char *s, int64_t *a, int64_t *b)
{
    if (strlen(s) != 33 || s[0] != 'c')
        return -1;
    return hex16(s + 1, a) == 0 && hex16(s + 17, b) == 0 ? 0 : -1;
}
