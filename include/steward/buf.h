/* A growable text buffer. After an allocation failure the buffer stays valid and
 * flags oom; later appends do nothing. */
#ifndef STEWARD_BUF_H
#define STEWARD_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data; /* NUL-terminated once anything was appended; owned */
    size_t len;
    size_t cap;
    bool oom;
};

void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_append(struct buf *b, const char *s, size_t len);
/* Hands the text to the caller (who frees it) and empties b. */
char *buf_detach(struct buf *b, size_t *len);
void buf_release(struct buf *b);

#endif
