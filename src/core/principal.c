#include "steward/principal.h"

#include <string.h>

int auth_scope_parse(const char *s, enum auth_scope *out)
{
    if (strcmp(s, "read") == 0)
        *out = AUTH_READ;
    else if (strcmp(s, "service") == 0)
        *out = AUTH_SERVICE;
    else if (strcmp(s, "admin") == 0)
        *out = AUTH_ADMIN;
    else
        return -1;
    return 0;
}

const char *auth_scope_name(enum auth_scope s)
{
    switch (s) {
    case AUTH_READ:
        return "read";
    case AUTH_SERVICE:
        return "service";
    case AUTH_ADMIN:
        return "admin";
    default:
        return "none";
    }
}
