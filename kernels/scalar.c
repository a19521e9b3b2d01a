/* scalar.c: the scalar kernels, always built: the reference the SIMD kernels are tested against. */
#include <string.h>

#include "kernels.h"

static void copy_scalar(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
}

static void fill_scalar(void *dst, size_t n, const void *element, size_t size)
{
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) memcpy(d + i * size, element, size);
}

/* Loads and stores go through memcpy: runs need not be aligned. */
#define CONVERT_SCALAR(name, in_t, out_t, expr)                                                    \
    static void name(void *dst, const void *src, size_t n)                                         \
    {                                                                                              \
        const unsigned char *s = src;                                                              \
        unsigned char *d = dst;                                                                    \
        for (size_t i = 0; i < n; i++) {                                                           \
            in_t x;                                                                                \
            memcpy(&x, s + i * sizeof(in_t), sizeof(in_t));                                       \
            out_t y = (expr);                                                                      \
            memcpy(d + i * sizeof(out_t), &y, sizeof(out_t));                                     \
        }                                                                                          \
    }

CONVERT_SCALAR(f32_to_f16, uint32_t, uint16_t, widen_f32_to_f16(x))
CONVERT_SCALAR(f32_to_bf16, uint32_t, uint16_t, widen_f32_to_bf16(x))
CONVERT_SCALAR(f16_to_f32, uint16_t, uint32_t, widen_f16_to_f32(x))
CONVERT_SCALAR(bf16_to_f32, uint16_t, uint32_t, widen_bf16_to_f32(x))
CONVERT_SCALAR(f16_to_bf16, uint16_t, uint16_t, widen_f32_to_bf16(widen_f16_to_f32(x)))
CONVERT_SCALAR(bf16_to_f16, uint16_t, uint16_t, widen_f32_to_f16(widen_bf16_to_f32(x)))

const widen_kernels widen_kernels_scalar = {
    .isa = WIDEN_ISA_SCALAR,
    .copy = copy_scalar,
    .fill = fill_scalar,
    .convert = {
        [WIDEN_CK_F32] = {[WIDEN_CK_F16] = f32_to_f16, [WIDEN_CK_BF16] = f32_to_bf16},
        [WIDEN_CK_F16] = {[WIDEN_CK_F32] = f16_to_f32, [WIDEN_CK_BF16] = f16_to_bf16},
        [WIDEN_CK_BF16] = {[WIDEN_CK_F32] = bf16_to_f32, [WIDEN_CK_F16] = bf16_to_f16},
    },
    .remap = NULL,
};
