/* Internals of src/auth (not a public interface): the in-memory snapshot of active API
 * keys and the rule that says when a replaced snapshot may be freed. Kept apart from the
 * pool so tests can drive it without a database.
 *
 * Lifetime rule (split reference count). A snapshot is freed exactly once, by whoever
 * drops its last reference, and never while a reader holds it, however long that reader
 * stalls:
 *   - The current snapshot is named by one 64-bit word, cur = slot << 48 | n, where slot
 *     indexes a table of snapshot pointers (slot 0: no snapshot yet) and n counts the
 *     acquisitions made while it has been current.
 *   - A reader acquires with a single fetch_add(cur, 1): the same atomic step that tells
 *     it which snapshot is current also records its reference, so no window exists in
 *     which a snapshot is found but not yet counted. It releases with fetch_sub(refs, 1)
 *     on the snapshot. Neither step waits or retries.
 *   - refs starts at 0 and only falls while the snapshot is current, so no release can
 *     reach 0 then. Replacing it exchanges cur and adds the n acquisitions read from the
 *     old word to refs: refs is now the number of references still held. Whoever makes
 *     refs exactly 0 (the publisher if no reader holds it, else the last reader to
 *     release) frees it and empties its slot.
 *   - A slot is reused only once empty, so cur never names a freed snapshot. If every
 *     slot is taken (AUTH_SNAP_SLOTS - 2 replaced snapshots all still held), publishing
 *     fails and the current snapshot stays: stale keys, never freed memory.
 * Publishers are serialised by a mutex that readers never touch. n has 48 bits: it would
 * take 2^48 acquisitions of one snapshot to overflow into the slot. */
#ifndef STEWARD_AUTH_INT_H
#define STEWARD_AUTH_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/principal.h"

#define AUTH_SNAP_SLOTS 1024 /* snapshots alive at once at most, counting slot 0 */
/* Entries of the negative cache of unknown keys (direct-mapped; 36 KiB). */
#define AUTH_NEG_SLOTS 1024

struct auth_key {
    unsigned char hash[32]; /* SHA-256 of the secret */
    enum auth_scope scope;
    long long id;
    int64_t expires_us; /* wall clock; 0 = never */
    /* wall-clock time of the last use seen through this snapshot (0 = none), stored at
     * most once a second per key so the readers rarely write a shared line; the refresh
     * writes it to api_keys.last_used_at */
    _Atomic int64_t used_us;
    char name[AUTH_NAME_MAX * 4 + 1];
};

/* The active keys, sorted by hash; immutable once published. */
struct auth_snapshot {
    atomic_llong refs; /* references still held once replaced; see the rule above */
    unsigned slot;     /* its index in auth_snaps.slot while alive */
    size_t count;
    struct auth_key keys[];
};

/* The cell holding the current snapshot. */
struct auth_snaps {
    _Atomic uint64_t cur; /* slot << 48 | acquisitions while current */
    _Atomic(struct auth_snapshot *) slot[AUTH_SNAP_SLOTS];
    pthread_mutex_t publish_mu; /* serialises publishers; readers never take it */
    unsigned next;              /* where the search for a free slot starts (publish_mu) */
    atomic_ullong published;
    atomic_ullong freed;
};

/* An empty cell: acquire returns NULL until the first publish. 0 or -1. */
int auth_snaps_init(struct auth_snaps *c);
/* Replaces the current snapshot and frees it when nobody holds it. Call only once no
 * reader holds a snapshot or can still acquire one; a snapshot still held then leaks. */
void auth_snaps_destroy(struct auth_snaps *c);

/* A snapshot for count keys (contents unset), owned by the caller until published. */
struct auth_snapshot *auth_snapshot_new(size_t count);
/* Sorts keys by hash, as auth_snapshot_find needs. */
void auth_snapshot_sort(struct auth_snapshot *s);
/* The key with this hash, or NULL. */
const struct auth_key *auth_snapshot_find(const struct auth_snapshot *s,
                                          const unsigned char hash[32]);

/* Makes s current; the cell owns it from then on. Safe from any thread. 0, or -1 when
 * every slot is held (s stays the caller's; the current snapshot is unchanged). */
int auth_snaps_publish(struct auth_snaps *c, struct auth_snapshot *s);
/* The current snapshot, or NULL before the first publish. Lock-free: one atomic add.
 * A snapshot returned stays intact until the matching auth_snaps_release. */
const struct auth_snapshot *auth_snaps_acquire(struct auth_snaps *c);
/* Drops a reference taken by auth_snaps_acquire (NULL: nothing to drop); s must not be
 * used afterwards. */
void auth_snaps_release(struct auth_snaps *c, const struct auth_snapshot *s);

#endif
