/* Reading the cross-instance notification payloads (scouts_notify.h). */
#include "scouts_notify.h"

#include <string.h>

/* Cuts the next field off *rest: the text up to the next '|', which becomes the end of
 * the field. Returns NULL when there is no further '|' or the field is empty. */
static const char *field(char **rest)
{
    char *bar = strchr(*rest, '|');
    if (!bar || bar == *rest)
        return NULL;
    *bar = '\0';
    const char *f = *rest;
    *rest = bar + 1;
    return f;
}

int scouts_notify_parse(const char *payload, struct scouts_notify *n)
{
    size_t len = payload ? strnlen(payload, SCOUTS_NOTIFY_MAX) : 0;
    if (len < 3 || len >= SCOUTS_NOTIFY_MAX || payload[1] != '|')
        return -1;
    memcpy(n->buf, payload, len + 1);
    n->instance = n->proposal = n->device = n->user = NULL;
    char *rest = n->buf + 2;
    switch (payload[0]) {
    case SCOUTS_NOTIFY_QUEUED:
    case SCOUTS_NOTIFY_USER_ERASED:
        break;
    case SCOUTS_NOTIFY_ACKED:
        n->instance = field(&rest);
        n->proposal = n->instance ? field(&rest) : NULL;
        n->device = n->proposal ? field(&rest) : NULL;
        if (!n->device)
            return -1;
        break;
    case SCOUTS_NOTIFY_DEVICE_GONE:
        n->device = field(&rest);
        if (!n->device)
            return -1;
        break;
    default:
        return -1;
    }
    if (!*rest)
        return -1;
    n->kind = (enum scouts_notify_kind)payload[0];
    n->user = rest;
    return 0;
}
