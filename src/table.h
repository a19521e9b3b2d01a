/* table.h: a hash table from byte strings (length and bytes, any content) to indices, for names,
 * keys and zip entries: lookups and duplicate checks in constant time, however many there are.
 * The table does not copy keys: they must outlive it. Seeded at random per table, so that crafted
 * names cannot all land in one bucket. */
#ifndef WIDEN_TABLE_H
#define WIDEN_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct widen_table_slot {
    const char *key;
    uint32_t len, value, hash; /* keys under 4 GiB, values below 2^32 */
} widen_table_slot;

typedef struct widen_table {
    widen_table_slot *slots;
    size_t mask; /* slot count - 1; 0 before the first put */
    size_t count;
    uint64_t seed;
} widen_table;

/* Adds key -> value. Returns 1 if added, 0 if the key was there (its value in *existing, when not
 * NULL; nothing changes), -1 when out of memory. */
int widen_table_put(widen_table *t, const char *key, size_t len, size_t value, size_t *existing);
/* Sets the value of a key that is there (1), or does nothing (0). */
int widen_table_update(widen_table *t, const char *key, size_t len, size_t value);
/* 1 and the value in *value if the key is there, else 0. */
int widen_table_get(const widen_table *t, const char *key, size_t len, size_t *value);
void widen_table_free(widen_table *t);

#endif
