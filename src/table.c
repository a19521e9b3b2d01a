/* table.c: open addressing with linear probing over (hash, key, value) slots, half full at most. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "table.h"

static uint32_t hash_of(const widen_table *t, const char *key, size_t len)
{
    return (uint32_t)XXH3_64bits_withSeed(key, len, t->seed);
}

static size_t find(const widen_table *t, const char *key, size_t len, uint32_t h)
{
    size_t i = (size_t)h & t->mask;
    while (t->slots[i].key) {
        const widen_table_slot *s = &t->slots[i];
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) return i;
        i = (i + 1) & t->mask;
    }
    return i;
}

static int grow(widen_table *t)
{
    size_t n = t->mask ? 2 * (t->mask + 1) : 64;
    widen_table_slot *slots = calloc(n, sizeof *slots);
    if (!slots) return -1;
    widen_table old = *t;
    t->slots = slots;
    t->mask = n - 1;
    for (size_t i = 0; old.mask && i <= old.mask; i++)
        if (old.slots[i].key) t->slots[find(t, old.slots[i].key, old.slots[i].len, old.slots[i].hash)] = old.slots[i];
    free(old.slots);
    return 0;
}

int widen_table_put(widen_table *t, const char *key, size_t len, size_t value, size_t *existing)
{
    if (len > UINT32_MAX || value > UINT32_MAX) return -1;
    if (!t->mask) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) seed = (uint64_t)(uintptr_t)t;
        t->seed = seed;
    }
    if ((t->count + 1) * 2 > (t->mask ? t->mask + 1 : 0) && grow(t)) return -1;
    uint32_t h = hash_of(t, key, len);
    size_t i = find(t, key, len, h);
    if (t->slots[i].key) {
        if (existing) *existing = t->slots[i].value;
        return 0;
    }
    /* an empty key needs a non-NULL pointer to mark the slot used */
    t->slots[i] = (widen_table_slot){.key = len ? key : "", .len = (uint32_t)len, .value = (uint32_t)value, .hash = h};
    t->count++;
    return 1;
}

int widen_table_update(widen_table *t, const char *key, size_t len, size_t value)
{
    if (!t->mask || len > UINT32_MAX || value > UINT32_MAX) return 0;
    size_t i = find(t, key, len, hash_of(t, key, len));
    if (!t->slots[i].key) return 0;
    t->slots[i].value = (uint32_t)value;
    return 1;
}

int widen_table_get(const widen_table *t, const char *key, size_t len, size_t *value)
{
    if (!t->mask || len > UINT32_MAX) return 0;
    size_t i = find(t, key, len, hash_of(t, key, len));
    if (!t->slots[i].key) return 0;
    if (value) *value = t->slots[i].value;
    return 1;
}

void widen_table_free(widen_table *t)
{
    free(t->slots);
    memset(t, 0, sizeof *t);
}
