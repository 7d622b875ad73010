/* The Observation Deck (docs/deck.md): the admin web console served under /deck/, and
 * the overview the console's first view reads (GET /v1/overview).
 *
 * The console's files (deck/ at the repository root) are compiled into the binary by
 * scripts/embed_deck.py; STEWARD_DECK_DIR serves them from disk instead. */
#ifndef STEWARD_DECK_H
#define STEWARD_DECK_H

#include <stdbool.h>
#include <stddef.h>

#include "steward/log.h"
#include "steward/pool.h"
struct router;

/* One file of the console: name without folder ("app.js"), content type, bytes and a
 * strong ETag (quoted) derived from the bytes. */
struct deck_file {
    const char *name;
    const char *type;
    const unsigned char *data;
    size_t len;
    const char *etag;
};

/* The table generated at build time (deck_data.c). */
extern const struct deck_file deck_embedded[];
extern const int deck_embedded_count;

struct deck_opts {
    bool enabled;    /* STEWARD_DECK: false answers 404 under /deck/ */
    const char *dir; /* STEWARD_DECK_DIR: serve from this folder; NULL or "" = embedded */
};

struct deck;

/* Creates the deck on a pool and logger (borrowed). opts is copied (dir too). NULL when
 * out of memory. */
struct deck *deck_new(struct pool *pool, const struct logger *lg, const struct deck_opts *opts);
void deck_free(struct deck *d);

/* Registers the console's pages and GET /v1/overview. Does not dereference d (the route
 * table command passes NULL). 0, or -1 when the route table is full. */
int deck_http_register(struct router *r, struct deck *d);

/* A console file by name: the embedded one, or with a dir set, read from disk into
 * *owned (the caller frees it; out->data points into it). ST_ENOTFOUND for a name not
 * served, ST_EDISABLED when the deck is off. */
int deck_file_get(const struct deck *d, const char *name, struct deck_file *out,
                  unsigned char **owned);

/* The overview as JSON text (the caller frees *json): bond counts by phase and risk, the
 * needs-attention lists, proposal deliveries and their latencies over the last 24 h, and
 * lessons of the last 24 h by type. ST_* */
int deck_overview(struct deck *d, char **json, size_t *len);

#endif
