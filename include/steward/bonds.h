/* Bond ledger (docs/api.md): per-user phase, risk and daily message cap, with an audit trail
 * of at most 500 events per user. Everything lives in PostgreSQL (tables bonds and
 * bond_events), so every instance sees the same ledger. Every write is one transaction
 * holding the user's row lock; the message consume is one conditional statement.
 *
 * Functions that answer with JSON build the text directly (no jansson tree) and hand it
 * to the caller, who frees it. They return ST_* codes from steward/err.h. */
#ifndef STEWARD_BONDS_H
#define STEWARD_BONDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "steward/log.h"
#include "steward/pool.h"
struct router;

struct bonds;

struct dbpipe;

/* Creates the ledger on a pool and logger (both borrowed; they must outlive it). dbpipe (borrowed, may be NULL) runs the hot-path reads and
 * consumes pipelined on database threads; without it they run at once on the calling
 * thread. Returns NULL when out of memory. */
struct bonds *bonds_new(struct pool *pool, const struct logger *lg, struct dbpipe *dbpipe);
/* Frees the ledger (NULL is fine). */
void bonds_free(struct bonds *b);

/* Registers every bonds route. Does not dereference b (the route table command passes
 * NULL). Returns 0, or -1 when the route table is full. */
int bonds_http_register(struct router *r, struct bonds *b);

/* ---- limits of the accepted input (checked by the HTTP adapter) ---- */
#define BONDS_LABEL_MAX 64        /* phase, risk level, egg status: characters */
#define BONDS_ARCHETYPE_MAX 128   /* characters */
#define BONDS_SIGNAL_MAX 256      /* signals.primary: characters */
#define BONDS_NODE_MAX 128        /* an ulm_vector node name: characters */
#define BONDS_NODES_MAX 1024      /* nodes in one ulm_vector */
#define BONDS_NOTE_MAX 2000       /* characters */
#define BONDS_CAP_MAX 1000000     /* daily_msg_cap */
#define BONDS_EVENTS_KEPT 500     /* events kept per user */
#define BONDS_NOTES_KEPT 20       /* notes kept per user */
#define BONDS_WINDOW_S 86400      /* the rolling message window */

/* A validated detection update. Strings are borrowed; NULL means the field was absent. */
struct bonds_node {
    const char *name;
    double value;
};

struct bonds_detection {
    const char *phase;          /* NULL counts as "dormant" */
    const char *risk_level;     /* NULL counts as "low" */
    const char *archetype;      /* NULL stores "unknown" */
    const char *egg_status;     /* egg_status.status; NULL stores "none" */
    double confidence;          /* 0.0 when absent */
    const char *primary_signal; /* signals.primary; NULL stores "" */
    bool has_turn_count;
    long long turn_count;
    size_t nnodes;
    const struct bonds_node *nodes; /* the ulm_vector */
};

/* A rate-limit answer. */
struct bonds_rate {
    bool allowed;
    long long remaining; /* -1 when the cap is 0 (unlimited) */
    long long cap;
    long long count;
    long long reset_in_s; /* seconds until the window resets (>= 1); 0 when cap is 0 */
};

/* ---- operations (each a transaction or a single statement) ---- */

/* The entry's ETag (quoted, strong): every write to the entry changes it. */
#define BONDS_ETAG_MAX 64

/* Reads the entry of user_id; done(arg, rc, json, len, etag) runs exactly once, on a database
 * thread (or before this returns), with the entry as a JSON object text (the callee owns
 * json; NULL unless rc is ST_OK). rc is ST_ENOTFOUND when the user was never written.
 * user_id is copied. */
typedef void (*bonds_json_done)(void *arg, int rc, char *json, size_t len, const char *etag);
void bonds_get(struct bonds *b, const char *user_id, bonds_json_done done, void *arg);

/* Lists entries newest last_updated first as {"items": [...], "next_cursor": ...}.
 * phase and risk_level filter when not NULL; cursor is a next_cursor from an earlier
 * page or NULL. ST_EINVALID when the cursor is not one this module wrote. */
int bonds_list(struct bonds *b, const char *phase, const char *risk_level, int limit,
               const char *cursor, char **json, size_t *len);
/* The same restricted to user ids starting with prefix (1..BONDS_USER_ID_MAX chars). */
int bonds_search(struct bonds *b, const char *prefix, const char *phase, const char *risk_level,
                 int limit, const char *cursor, char **json, size_t *len);

/* Applies a detection (creating the entry on first write) and answers
 * {"bond": {...}, "event": {...} | null} (the phase event or null). */
int bonds_detect(struct bonds *b, const char *user_id, const struct bonds_detection *d,
                 char **json, size_t *len);

/* The read-only rate-limit check; never writes. A user never written gets the default
 * entry's answer (cap 0: allowed, remaining -1, count 0). */
int bonds_rate_check(struct bonds *b, const char *user_id, struct bonds_rate *out);

/* Atomically admits and counts one message (creating the entry on first write), then
 * runs done(arg, rc, rate) exactly once, on a database thread (or before this returns).
 * rc ST_OK with rate->allowed true when admitted (rate holds the state after counting:
 * remaining is what is left), ST_ELIMIT when the cap is reached (the current state,
 * allowed false, remaining 0), another ST_* on failure. Cap 0 admits everything and
 * still counts. Each step is one statement, pipelined with other requests'. user_id is
 * copied. */
typedef void (*bonds_rate_done)(void *arg, int rc, const struct bonds_rate *rate);
void bonds_consume(struct bonds *b, const char *user_id, bonds_rate_done done, void *arg);

/* Sets the daily cap (0..BONDS_CAP_MAX), logging an admin_action carrying actor.
 * Answers the entry and its new ETag (etag may be NULL). With if_match (an If-Match
 * list) the write happens only while the entry's ETag is listed: ST_ECONFLICT
 * otherwise, and nothing changes. */
int bonds_set_cap(struct bonds *b, const char *user_id, long long cap, const char *actor,
                  const char *if_match, char **json, size_t *len, char etag[BONDS_ETAG_MAX]);

/* Adds a note (1..BONDS_NOTE_MAX characters), keeping the newest 20, logging an
 * admin_action carrying actor. Answers the entry. */
int bonds_add_note(struct bonds *b, const char *user_id, const char *note, const char *actor,
                   char **json, size_t *len);

/* The user's events newest first as {"items": [...], "next_cursor": ...}. ST_ENOTFOUND
 * when the user has no entry; ST_EINVALID for a foreign cursor. */
int bonds_events(struct bonds *b, const char *user_id, int limit, const char *cursor,
                 char **json, size_t *len);

/* The ledger's share of an erasure (src/users), inside its transaction on c: deletes
 * the entry and its events and adds {"bonds", "bond_events"} to counts. */
int bonds_erase_user_tx(struct bonds *b, struct pool_conn *c, const char *user_id,
                        json_t *counts);

#endif
