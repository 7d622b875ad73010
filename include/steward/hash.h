/* Chained hash tables for the in-memory registries (sessions by id, users by name).
 *
 * Intrusive: each entry embeds a struct hash_node and the table only links nodes, so it
 * never allocates per entry and never owns one. The table keeps every node's hash; a
 * lookup walks the nodes of one hash and the caller compares its own key. The bucket
 * count is fixed at hash_init. Not thread-safe: the owner locks. */
#ifndef STEWARD_HASH_H
#define STEWARD_HASH_H

#include <stddef.h>
#include <stdint.h>

struct hash_node {
    struct hash_node *next;
    uint64_t hash;
};

struct hash_table {
    struct hash_node **buckets;
    size_t mask; /* bucket count - 1 */
    size_t len;  /* nodes linked */
};

/* The entry of type holding node n in its member field (n must not be NULL). */
#define hash_entry(n, type, member) ((type *)(void *)((char *)(n)-offsetof(type, member)))

/* Spreads the bits of v over the whole word (a 64-bit finaliser). */
uint64_t hash_u64(uint64_t v);
/* Hash of the NUL-terminated string s. */
uint64_t hash_str(const char *s);

/* Makes an empty table of nbuckets (rounded up to a power of two). 0, or -1 when out
 * of memory. */
int hash_init(struct hash_table *t, size_t nbuckets);
/* Frees the buckets; the entries are the caller's. */
void hash_release(struct hash_table *t);
void hash_insert(struct hash_table *t, struct hash_node *n, uint64_t hash);
/* Unlinks n (nothing when it is not linked here). */
void hash_remove(struct hash_table *t, struct hash_node *n);
/* The first node with this hash, then the next one with the same hash; NULL after the
 * last. */
struct hash_node *hash_first(const struct hash_table *t, uint64_t hash);
struct hash_node *hash_next(const struct hash_node *n);

/* Every node, in no particular order:
 *   struct hash_iter it = hash_iter(t);
 *   for (struct hash_node *n; (n = hash_iter_next(&it)) != NULL;) ...
 * The node just returned may be removed; no other node may be inserted or removed. */
struct hash_iter {
    const struct hash_table *t;
    size_t bucket;
    struct hash_node *next;
};
struct hash_iter hash_iter(const struct hash_table *t);
struct hash_node *hash_iter_next(struct hash_iter *it);

#endif
