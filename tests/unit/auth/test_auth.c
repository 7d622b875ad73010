/* API keys without a database: key names, snapshot lookup, and the snapshot lifetime
 * rule of src/auth/auth_int.h, including a stress test with readers that stall across
 * many refreshes (run under ASan: a snapshot freed too early is a heap-use-after-free). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/auth_int.h"
#include "steward/auth.h"
#include "steward/clock.h"
#include "unit.h"

static void check_names(void)
{
    char max[AUTH_NAME_MAX + 2];
    memset(max, 'k', sizeof(max));
    max[AUTH_NAME_MAX] = '\0';
    CHECK(auth_name_valid("ci-worker.1"));
    CHECK(auth_name_valid("A_z.0-9"));
    CHECK(auth_name_valid(max));
    max[AUTH_NAME_MAX] = 'k';
    max[AUTH_NAME_MAX + 1] = '\0';
    CHECK(!auth_name_valid(max));
    CHECK(!auth_name_valid(""));
    CHECK(!auth_name_valid("a b"));
    CHECK(!auth_name_valid("a/b"));
    CHECK(!auth_name_valid("caf\xc3\xa9"));
}

/* Fills a snapshot whose whole contents follow from gen, so a reader can tell an
 * intact one from a freed or reused one. */
static struct auth_snapshot *make_snapshot(unsigned long long gen)
{
    size_t n = 1 + gen % 5;
    struct auth_snapshot *s = auth_snapshot_new(n);
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        struct auth_key *k = &s->keys[i];
        memset(k, 0, sizeof(*k));
        for (size_t b = 0; b < sizeof(k->hash); b++)
            k->hash[b] = (unsigned char)(gen * 31 + i * 7 + b);
        k->hash[0] = (unsigned char)i; /* already sorted by hash */
        k->scope = (enum auth_scope)(1 + (gen + i) % 3);
        k->id = (long long)(gen * 8 + i);
        snprintf(k->name, sizeof(k->name), "gen-%llu-key-%zu", gen, i);
    }
    return s;
}

/* The generation of an intact snapshot, or -1 when anything in it is off. */
static long long snapshot_gen(const struct auth_snapshot *s)
{
    if (s->count < 1 || s->count > 5 || s->keys[0].id < 0)
        return -1;
    unsigned long long gen = (unsigned long long)s->keys[0].id / 8;
    if (s->count != 1 + gen % 5)
        return -1;
    for (size_t i = 0; i < s->count; i++) {
        const struct auth_key *k = &s->keys[i];
        char name[sizeof(k->name)];
        snprintf(name, sizeof(name), "gen-%llu-key-%zu", gen, i);
        if (k->id != (long long)(gen * 8 + i) || k->hash[0] != i ||
            k->scope != (enum auth_scope)(1 + (gen + i) % 3) || strcmp(k->name, name) != 0)
            return -1;
        for (size_t b = 1; b < sizeof(k->hash); b++)
            if (k->hash[b] != (unsigned char)(gen * 31 + i * 7 + b))
                return -1;
    }
    return (long long)gen;
}

static void check_find(void)
{
    struct auth_snapshot *s = auth_snapshot_new(3);
    CHECK(s != NULL);
    if (!s)
        return;
    const unsigned char first[3] = {0xc0, 0x01, 0x7f};
    for (size_t i = 0; i < 3; i++) {
        memset(&s->keys[i], 0, sizeof(s->keys[i]));
        memset(s->keys[i].hash, 0x55, 32);
        s->keys[i].hash[0] = first[i];
        s->keys[i].id = (long long)i + 10;
    }
    auth_snapshot_sort(s);
    CHECK(s->keys[0].hash[0] == 0x01 && s->keys[1].hash[0] == 0x7f && s->keys[2].hash[0] == 0xc0);
    unsigned char h[32];
    memset(h, 0x55, 32);
    h[0] = 0xc0;
    const struct auth_key *k = auth_snapshot_find(s, h);
    CHECK(k != NULL && k->id == 10);
    h[0] = 0x01;
    k = auth_snapshot_find(s, h);
    CHECK(k != NULL && k->id == 11);
    h[31] = 0x56; /* differs only in the last byte */
    CHECK(auth_snapshot_find(s, h) == NULL);
    h[0] = 0xff;
    h[31] = 0x55;
    CHECK(auth_snapshot_find(s, h) == NULL);
    free(s);
    struct auth_snapshot *empty = auth_snapshot_new(0);
    CHECK(empty != NULL && empty->count == 0);
    if (empty)
        CHECK(auth_snapshot_find(empty, h) == NULL);
    free(empty);
}

/* The rule step by step, single-threaded. */
static void check_lifetime(void)
{
    struct auth_snaps c;
    CHECK(auth_snaps_init(&c) == 0);
    const struct auth_snapshot *none = auth_snaps_acquire(&c);
    CHECK(none == NULL);
    auth_snaps_release(&c, none);

    struct auth_snapshot *a = make_snapshot(1);
    CHECK(auth_snaps_publish(&c, a) == 0);
    const struct auth_snapshot *r1 = auth_snaps_acquire(&c);
    const struct auth_snapshot *r2 = auth_snaps_acquire(&c);
    CHECK(r1 == a && r2 == a);
    auth_snaps_release(&c, r1); /* released while current: still alive */
    CHECK(atomic_load(&c.freed) == 0);
    const struct auth_snapshot *r3 = auth_snaps_acquire(&c);
    CHECK(r3 == a);
    auth_snaps_release(&c, r3);

    /* replaced while r2 holds it: not freed until r2 lets go */
    CHECK(auth_snaps_publish(&c, make_snapshot(2)) == 0);
    CHECK(atomic_load(&c.freed) == 0);
    CHECK(snapshot_gen(r2) == 1);
    const struct auth_snapshot *b = auth_snaps_acquire(&c);
    CHECK(b != NULL && snapshot_gen(b) == 2);
    for (unsigned long long g = 3; g < 10; g++)
        CHECK(auth_snaps_publish(&c, make_snapshot(g)) == 0);
    CHECK(atomic_load(&c.freed) == 6); /* 3..8 had no readers; 1 and 2 are held */
    CHECK(snapshot_gen(r2) == 1 && snapshot_gen(b) == 2);
    auth_snaps_release(&c, r2);
    CHECK(atomic_load(&c.freed) == 7);
    auth_snaps_release(&c, b);
    CHECK(atomic_load(&c.freed) == 8);
    CHECK(atomic_load(&c.published) == 9);

    /* the current one goes with the cell */
    const struct auth_snapshot *cur = auth_snaps_acquire(&c);
    CHECK(cur != NULL && snapshot_gen(cur) == 9);
    auth_snaps_release(&c, cur);
    auth_snaps_destroy(&c);
    CHECK(atomic_load(&c.freed) == 9);
}

/* Every slot held by a stalled reader: publishing fails, nothing is freed early, and
 * the current snapshot stays. */
static void check_slots_full(void)
{
    static const struct auth_snapshot *held[AUTH_SNAP_SLOTS];
    struct auth_snaps c;
    CHECK(auth_snaps_init(&c) == 0);
    size_t nheld = 0;
    int failed_at = -1;
    for (unsigned long long g = 1; g <= AUTH_SNAP_SLOTS; g++) {
        struct auth_snapshot *s = make_snapshot(g);
        if (auth_snaps_publish(&c, s) != 0) {
            failed_at = (int)g;
            free(s);
            break;
        }
        held[nheld++] = auth_snaps_acquire(&c);
    }
    /* slots 1..SLOTS-1 are usable: that many snapshots, all held */
    CHECK(failed_at == AUTH_SNAP_SLOTS);
    CHECK(nheld == AUTH_SNAP_SLOTS - 1 && atomic_load(&c.freed) == 0);
    const struct auth_snapshot *cur = auth_snaps_acquire(&c);
    CHECK(cur == held[nheld - 1]);
    auth_snaps_release(&c, cur);
    int intact = 0;
    for (size_t i = 0; i < nheld; i++)
        intact += snapshot_gen(held[i]) == (long long)i + 1;
    CHECK(intact == AUTH_SNAP_SLOTS - 1);
    /* one reader lets go: its slot is reused */
    unsigned slot0 = held[0]->slot;
    auth_snaps_release(&c, held[0]);
    CHECK(atomic_load(&c.freed) == 1);
    CHECK(auth_snaps_publish(&c, make_snapshot(5000)) == 0);
    cur = auth_snaps_acquire(&c);
    CHECK(cur != NULL && snapshot_gen(cur) == 5000 && cur->slot == slot0);
    auth_snaps_release(&c, cur);
    CHECK(atomic_load(&c.freed) == 1);
    for (size_t i = 1; i < nheld; i++)
        auth_snaps_release(&c, held[i]);
    auth_snaps_destroy(&c);
    CHECK(atomic_load(&c.freed) == AUTH_SNAP_SLOTS);
}

/* ---- stress: readers stall across many publishes ---- */

#define STRESS_READERS 4
#define PUBLISH_EVERY_US 2000 /* the refresh minimum is 100 ms: this is 50 times faster */
#define STRESS_MS 2500

struct stress {
    struct auth_snaps cell;
    atomic_bool stop;
    atomic_ullong last_gen; /* generation of the latest published snapshot */
    unsigned long long published;
};

struct reader {
    struct stress *st;
    unsigned seed;
    unsigned long long reads;
    unsigned long long stalls;
    unsigned long long longest_stall; /* publishes while one snapshot was held */
    unsigned long long damaged;       /* snapshots found not intact */
    unsigned long long backwards;     /* a later acquire saw an older generation */
    unsigned long long nulls;
};

static unsigned next_rand(unsigned *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return *seed >> 16;
}

static void *reader_run(void *arg)
{
    struct reader *r = arg;
    long long last = 0;
    while (!atomic_load(&r->st->stop)) {
        const struct auth_snapshot *s = auth_snaps_acquire(&r->st->cell);
        if (!s) {
            r->nulls++;
            continue;
        }
        long long gen = snapshot_gen(s);
        r->reads++;
        if (gen < 0)
            r->damaged++;
        else if (gen < last)
            r->backwards++;
        else
            last = gen;
        if (next_rand(&r->seed) % 256 == 0) {
            /* stall holding it for 10 to 60 publishes, then read it again */
            unsigned long long before = atomic_load(&r->st->last_gen);
            clock_sleep_us((long)(PUBLISH_EVERY_US * (10 + next_rand(&r->seed) % 50)));
            unsigned long long spanned = atomic_load(&r->st->last_gen) - before;
            if (spanned > r->longest_stall)
                r->longest_stall = spanned;
            r->stalls++;
            if (snapshot_gen(s) != gen)
                r->damaged++;
        }
        auth_snaps_release(&r->st->cell, s);
    }
    return NULL;
}

static void *publisher_run(void *arg)
{
    struct stress *st = arg;
    for (unsigned long long g = 1; !atomic_load(&st->stop); g++) {
        struct auth_snapshot *s = make_snapshot(g);
        if (!s || auth_snaps_publish(&st->cell, s) != 0) {
            free(s);
            break;
        }
        st->published++;
        atomic_store(&st->last_gen, g);
        if (g % 2) /* the other half back to back */
            clock_sleep_us(PUBLISH_EVERY_US);
    }
    return NULL;
}

static void check_stress(void)
{
    static struct stress st;
    CHECK(auth_snaps_init(&st.cell) == 0);
    atomic_init(&st.stop, false);
    atomic_init(&st.last_gen, 0);
    struct reader rd[STRESS_READERS];
    pthread_t rt[STRESS_READERS], pt;
    int started = 0;
    bool pub = pthread_create(&pt, NULL, publisher_run, &st) == 0;
    for (int i = 0; i < STRESS_READERS; i++) {
        rd[i] = (struct reader){.st = &st, .seed = 7919u * (unsigned)(i + 1)};
        if (pthread_create(&rt[i], NULL, reader_run, &rd[i]) == 0)
            started++;
    }
    clock_sleep_us(STRESS_MS * 1000L);
    atomic_store(&st.stop, true);
    if (pub)
        pthread_join(pt, NULL);
    struct reader sum = {0};
    for (int i = 0; i < started; i++) {
        pthread_join(rt[i], NULL);
        sum.reads += rd[i].reads;
        sum.stalls += rd[i].stalls;
        sum.damaged += rd[i].damaged;
        sum.backwards += rd[i].backwards;
        if (rd[i].longest_stall > sum.longest_stall)
            sum.longest_stall = rd[i].longest_stall;
    }
    printf("# stress: %llu published, %llu reads, %llu stalls, longest stall %llu publishes\n",
           st.published, sum.reads, sum.stalls, sum.longest_stall);
    CHECK(pub && started == STRESS_READERS);
    CHECK(sum.damaged == 0);
    CHECK(sum.backwards == 0);
    /* the test meant something: many publishes, stalls spanning far more than a few */
    CHECK(st.published >= 100);
    CHECK(sum.stalls >= 4);
    CHECK(sum.longest_stall >= 8);
    /* readers are done: everything but the current snapshot is freed already */
    CHECK(atomic_load(&st.cell.freed) == st.published - 1);
    auth_snaps_destroy(&st.cell);
    CHECK(atomic_load(&st.cell.freed) == st.published);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep every line if a sanitizer ends the process */
    check_names();
    check_find();
    check_lifetime();
    check_slots_full();
    check_stress();
    return unit_done();
}
