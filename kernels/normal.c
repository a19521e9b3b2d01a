/* normal.c: the counter-based generator behind WIDEN_MAP_NORMAL: two uniforms per element from
 * (seed, element index) alone, so noise is the same on every ISA, thread count and chunk size. */
#include "kernels.h"

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void widen_normal_uniforms(float *u1, float *u2, size_t n, uint64_t seed, uint64_t index)
{
    uint64_t key = mix64(seed + 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < n; i++) {
        uint64_t x = mix64((index + i) * 0x9e3779b97f4a7c15ull + key);
        u1[i] = (float)((x >> 40) + 1) * 0x1p-24f;         /* (0, 1]: log stays finite */
        u2[i] = (float)((x >> 16) & 0xffffffu) * 0x1p-24f; /* [0, 1) */
    }
}
