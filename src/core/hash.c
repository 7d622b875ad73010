#include "steward/hash.h"

#include <stdlib.h>

uint64_t hash_u64(uint64_t v)
{
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdull;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ull;
    v ^= v >> 33;
    return v;
}

uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return hash_u64(h);
}

int hash_init(struct hash_table *t, size_t nbuckets)
{
    size_t n = 1;
    while (n < nbuckets)
        n <<= 1;
    t->buckets = calloc(n, sizeof(*t->buckets));
    t->mask = n - 1;
    t->len = 0;
    return t->buckets ? 0 : -1;
}

void hash_release(struct hash_table *t)
{
    free(t->buckets);
    t->buckets = NULL;
    t->mask = 0;
    t->len = 0;
}

void hash_insert(struct hash_table *t, struct hash_node *n, uint64_t hash)
{
    struct hash_node **b = &t->buckets[hash & t->mask];
    n->hash = hash;
    n->next = *b;
    *b = n;
    t->len++;
}

void hash_remove(struct hash_table *t, struct hash_node *n)
{
    for (struct hash_node **pp = &t->buckets[n->hash & t->mask]; *pp; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            n->next = NULL;
            t->len--;
            return;
        }
    }
}

static struct hash_node *same_hash(struct hash_node *n, uint64_t hash)
{
    while (n && n->hash != hash)
        n = n->next;
    return n;
}

struct hash_node *hash_first(const struct hash_table *t, uint64_t hash)
{
    return same_hash(t->buckets[hash & t->mask], hash);
}

struct hash_node *hash_next(const struct hash_node *n)
{
    return same_hash(n->next, n->hash);
}

/* The first node of the first non-empty bucket from it->bucket on. */
static void iter_seek(struct hash_iter *it)
{
    it->next = NULL;
    if (!it->t->buckets)
        return;
    while (it->bucket <= it->t->mask && !(it->next = it->t->buckets[it->bucket]))
        it->bucket++;
}

struct hash_iter hash_iter(const struct hash_table *t)
{
    struct hash_iter it = {t, 0, NULL};
    iter_seek(&it);
    return it;
}

struct hash_node *hash_iter_next(struct hash_iter *it)
{
    struct hash_node *n = it->next;
    if (!n)
        return NULL;
    it->next = n->next;
    if (!it->next) {
        it->bucket++;
        iter_seek(it);
    }
    return n;
}
