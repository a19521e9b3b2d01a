/* simd.h: small helpers the SIMD kernel files share. */
#ifndef WIDEN_SIMD_H
#define WIDEN_SIMD_H

#include <stddef.h>
#include <string.h>

/* `width` bytes of an element of `size` bytes (1, 2, 4, 8) repeated, starting `phase` bytes into it. */
static inline void widen_pattern(unsigned char *out, size_t width, const void *element, size_t size, size_t phase)
{
    const unsigned char *e = element;
    for (size_t i = 0; i < width; i++) out[i] = e[(i + phase) % size];
}

#endif
