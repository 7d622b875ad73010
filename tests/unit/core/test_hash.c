/* The intrusive hash table of the session registries. */
#include <stdint.h>
#include <string.h>

#include "steward/hash.h"
#include "unit.h"

struct item {
    int key;
    struct hash_node node;
};

static struct item *find(const struct hash_table *t, int key)
{
    uint64_t h = hash_u64((uint64_t)key);
    for (struct hash_node *n = hash_first(t, h); n; n = hash_next(n)) {
        struct item *it = hash_entry(n, struct item, node);
        if (it->key == key)
            return it;
    }
    return NULL;
}

static void test_table(void)
{
    enum { N = 1000 };
    static struct item items[N];
    struct hash_table t;
    CHECK(hash_init(&t, 100) == 0);
    CHECK(t.mask == 127); /* rounded up to a power of two */
    for (int i = 0; i < N; i++) {
        items[i].key = i;
        hash_insert(&t, &items[i].node, hash_u64((uint64_t)i));
    }
    CHECK(t.len == N);
    int found = 0;
    for (int i = 0; i < N; i++)
        found += find(&t, i) == &items[i];
    CHECK(found == N);
    CHECK(find(&t, N) == NULL);

    /* removal while iterating: every other item, each just after it was returned */
    struct hash_iter it = hash_iter(&t);
    int seen = 0;
    for (struct hash_node *n; (n = hash_iter_next(&it)) != NULL;) {
        struct item *x = hash_entry(n, struct item, node);
        seen++;
        if (x->key % 2 == 0)
            hash_remove(&t, n);
    }
    CHECK(seen == N);
    CHECK(t.len == N / 2);
    int left = 0, wrong = 0;
    for (int i = 0; i < N; i++) {
        struct item *x = find(&t, i);
        left += x != NULL;
        wrong += (x != NULL) != (i % 2 == 1);
    }
    CHECK(left == N / 2 && wrong == 0);

    /* removing what is not linked changes nothing */
    hash_remove(&t, &items[0].node);
    CHECK(t.len == N / 2);

    /* nodes of equal hash are told apart by the caller's key */
    struct item a = {.key = 1}, b = {.key = 2};
    struct hash_table u;
    CHECK(hash_init(&u, 1) == 0 && u.mask == 0);
    hash_insert(&u, &a.node, 7);
    hash_insert(&u, &b.node, 7);
    hash_insert(&u, &items[1].node, 8);
    int same = 0;
    for (struct hash_node *n = hash_first(&u, 7); n; n = hash_next(n))
        same++;
    CHECK(same == 2);
    CHECK(hash_first(&u, 9) == NULL);
    hash_release(&u);

    hash_release(&t);
    it = hash_iter(&t); /* a released table iterates as empty */
    CHECK(hash_iter_next(&it) == NULL);
}

static void test_functions(void)
{
    CHECK(hash_str("device-a") == hash_str("device-a"));
    CHECK(hash_str("device-a") != hash_str("device-b"));
    CHECK(hash_u64(1) != hash_u64(2));
    /* consecutive ids spread over the low bits the buckets use */
    uint8_t used[64] = {0};
    for (uint64_t i = 1; i <= 64; i++)
        used[hash_u64(i) & 63] = 1;
    int n = 0;
    for (int i = 0; i < 64; i++)
        n += used[i];
    CHECK(n > 32);
}

int main(void)
{
    test_table();
    test_functions();
    return unit_done();
}
