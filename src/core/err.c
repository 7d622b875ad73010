#include "steward/err.h"

const char *st_strerror(int err)
{
    switch (err) {
    case ST_OK: return "ok";
    case ST_ENOTFOUND: return "not_found";
    case ST_ECONFLICT: return "conflict";
    case ST_EUNAVAIL: return "unavailable";
    case ST_EINTERNAL: return "internal";
    case ST_EINVALID: return "invalid";
    case ST_EDISABLED: return "disabled";
    case ST_ELIMIT: return "limited";
    case ST_ENOMEM: return "no_memory";
    case ST_EFORBIDDEN: return "forbidden";
    default: return "unknown";
    }
}
