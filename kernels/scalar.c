/* scalar.c: the scalar kernels, always built: the reference the SIMD kernels are tested against. */
#include <sleef.h>
#include <string.h>

#define XXH_VECTOR XXH_SCALAR /* the reference: no vectors */
#include "kernels.h"
#include "xxh3.h"
#include "arith.h"

static void copy_scalar(void *dst, const void *src, size_t bytes, int stream)
{
    (void)stream;
    memcpy(dst, src, bytes);
}

/* The pattern, then doubling copies of what is already filled. */
static void fill_scalar(void *dst, size_t total, const unsigned char *pattern, size_t size, int stream)
{
    (void)stream;
    (void)size;
    unsigned char *d = dst;
    size_t done = total < 64 ? total : 64;
    memcpy(d, pattern, done);
    while (done < total) {
        size_t step = done < total - done ? done : total - done;
        memcpy(d + done, d, step);
        done += step;
    }
}

/* Loads and stores go through memcpy: runs need not be aligned. */
#define CONVERT_LOOP(in_t, out_t, expr)                                                            \
    for (size_t i = 0; i < n; i++) {                                                               \
        in_t x;                                                                                    \
        memcpy(&x, s + i * sizeof(in_t), sizeof(in_t));                                           \
        out_t y = (expr);                                                                          \
        memcpy(d + i * sizeof(out_t), &y, sizeof(out_t));                                          \
    }

void widen_convert_scalar(int from, int to, void *dst, const void *src, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d = dst;
    switch (from * WIDEN_CK_COUNT + to) {
    case WIDEN_CK_F32 * WIDEN_CK_COUNT + WIDEN_CK_F16: CONVERT_LOOP(uint32_t, uint16_t, widen_f32_to_f16(x)) break;
    case WIDEN_CK_F32 * WIDEN_CK_COUNT + WIDEN_CK_BF16: CONVERT_LOOP(uint32_t, uint16_t, widen_f32_to_bf16(x)) break;
    case WIDEN_CK_F16 * WIDEN_CK_COUNT + WIDEN_CK_F32: CONVERT_LOOP(uint16_t, uint32_t, widen_f16_to_f32(x)) break;
    case WIDEN_CK_BF16 * WIDEN_CK_COUNT + WIDEN_CK_F32: CONVERT_LOOP(uint16_t, uint32_t, widen_bf16_to_f32(x)) break;
    case WIDEN_CK_F16 * WIDEN_CK_COUNT + WIDEN_CK_BF16:
        CONVERT_LOOP(uint16_t, uint16_t, widen_f32_to_bf16(widen_f16_to_f32(x))) break;
    case WIDEN_CK_BF16 * WIDEN_CK_COUNT + WIDEN_CK_F16:
        CONVERT_LOOP(uint16_t, uint16_t, widen_f32_to_f16(widen_bf16_to_f32(x))) break;
    default: break;
    }
}

#define SCALAR_CONVERT(name, from, to)                                                             \
    static void name(void *dst, const void *src, size_t n, int stream)                             \
    {                                                                                              \
        (void)stream;                                                                              \
        widen_convert_scalar(WIDEN_CK_##from, WIDEN_CK_##to, dst, src, n);                         \
    }
SCALAR_CONVERT(f32_to_f16, F32, F16)
SCALAR_CONVERT(f32_to_bf16, F32, BF16)
SCALAR_CONVERT(f16_to_f32, F16, F32)
SCALAR_CONVERT(f16_to_bf16, F16, BF16)
SCALAR_CONVERT(bf16_to_f32, BF16, F32)
SCALAR_CONVERT(bf16_to_f16, BF16, F16)

void widen_normal_scalar(float *out, size_t n, float std, uint64_t seed, uint64_t index)
{
    enum { B = 64 };
    float u1[B], u2[B];
    for (size_t at = 0; at < n; at += B) {
        size_t m = n - at < B ? n - at : B;
        widen_normal_uniforms(u1, u2, m, seed, index + at);
        for (size_t i = 0; i < m; i++) {
            float r = Sleef_cinz_sqrtf1_u05purec(-2.0f * Sleef_cinz_logf1_u10purec(u1[i]));
            float c = Sleef_cinz_sincosf1_u10purec(6.2831855f * u2[i]).y;
            out[at + i] = std * (r * c);
        }
    }
}

WIDEN_DEFINE_HASH(scalar)

const widen_kernels widen_kernels_scalar = {
    .isa = WIDEN_ISA_SCALAR,
    .copy = copy_scalar,
    .fill = fill_scalar,
    .convert = WIDEN_CONVERT_ENTRIES,
    WIDEN_ARITH_ENTRIES,
    .normal_f32 = widen_normal_scalar,
    WIDEN_HASH_ENTRIES(scalar),
};
