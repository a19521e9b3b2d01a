/* xxh3.h: XXH3-128 compiled inline into each ISA's kernel file (xxHash picks its vector code from
 * the file's target flags), so hashing goes through the same dispatch as the kernels. */
#ifndef WIDEN_XXH3_H
#define WIDEN_XXH3_H

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kernels.h"

_Static_assert(sizeof(XXH3_state_t) <= sizeof(widen_hash_state), "widen_hash_state too small for XXH3_state_t");
_Static_assert(_Alignof(XXH3_state_t) <= _Alignof(widen_hash_state), "widen_hash_state under-aligned");

#define WIDEN_DEFINE_HASH(isa)                                                                     \
    static void hash_reset_##isa(widen_hash_state *s)                                              \
    {                                                                                              \
        XXH3_128bits_reset((XXH3_state_t *)(void *)s);                                             \
    }                                                                                              \
    static void hash_update_##isa(widen_hash_state *s, const void *data, size_t len)               \
    {                                                                                              \
        XXH3_128bits_update((XXH3_state_t *)(void *)s, data, len);                                 \
    }                                                                                              \
    static widen_hash128 hash_digest_##isa(const widen_hash_state *s)                              \
    {                                                                                              \
        XXH128_hash_t h = XXH3_128bits_digest((const XXH3_state_t *)(const void *)s);              \
        return (widen_hash128){.high = h.high64, .low = h.low64};                                  \
    }

#define WIDEN_HASH_ENTRIES(isa) .hash_reset = hash_reset_##isa, .hash_update = hash_update_##isa, \
                                .hash_digest = hash_digest_##isa

#endif
