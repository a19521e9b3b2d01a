/* kernels.h: the kernel contract every ISA implements, and the registry that lists the ISAs. */
#ifndef WIDEN_KERNELS_H
#define WIDEN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "widen/widen.h"

#define WIDEN_LINE 64 /* cache line bytes: streaming stores want whole, aligned lines */
#define WIDEN_PATTERN_BYTES 72 /* a 64-byte vector, plus room to start at any phase of an element */
#define WIDEN_SHORT_COPY 4096  /* cached copies shorter than this take widen_copy_short_avx2, not memcpy */

/* Index of a computable dtype in the convert table: F32, F16, BF16. */
enum { WIDEN_CK_F32, WIDEN_CK_F16, WIDEN_CK_BF16, WIDEN_CK_COUNT };

/* n elements from src to dst; `stream`: non-temporal stores (the caller fences). */
typedef void (*widen_convert_fn)(void *dst, const void *src, size_t n, int stream);

/* A remap of rows too short for run-by-run work (e.g. RGB -> RGBA pixels, inner == 1), as one byte
 * permutation per step of `rows_per_step` rows: output byte b of a step is input byte source[b] of
 * the step, or fill[b] where source[b] < 0. */
typedef struct widen_rows_plan {
    size_t width;             /* vector bytes per step (16, 32, 64) */
    size_t rows_per_step;     /* k */
    size_t in_step, out_step; /* bytes per step: k * input row, k * output row */
    size_t steps;             /* whole steps whose full-width load and store stay inside the job */
    int16_t source[64];
    uint8_t fill[64];
} widen_rows_plan;

/* Returns 1 and fills plan if `job` (same dtype in and out, dense output rows) suits a permutation
 * of `width` bytes per step, with at least one step; 0 otherwise. */
int widen_rows_plan_build(const widen_remap_job *job, size_t width, widen_rows_plan *plan);

/* Room for an XXH3 streaming state (checked against XXH3_state_t in xxh3.h). */
typedef struct widen_hash_state {
    _Alignas(64) unsigned char bytes[1024];
} widen_hash_state;

/* One ISA's kernels. Run-level primitives (the libyuv "row" model): the shared driver walks a remap
 * job's rows and channels and calls them on contiguous runs of `inner` elements. `rows`, if set,
 * takes the leading rows of a job whose rows are too short for that and returns how many it did
 * (0: none); the driver does the rest run by run. */
typedef struct widen_kernels {
    widen_isa isa;
    void (*copy)(void *dst, const void *src, size_t bytes, int stream);
    /* `bytes` (a multiple of size) of an element of `size` bytes (1, 2, 4, 8) repeated; `pattern`
     * holds WIDEN_PATTERN_BYTES of the element repeated from phase 0 */
    void (*fill)(void *dst, size_t bytes, const unsigned char *pattern, size_t size, int stream);
    /* convert[from][to], from != to: round to nearest even, NaN quieted, denormals kept */
    widen_convert_fn convert[WIDEN_CK_COUNT][WIDEN_CK_COUNT];
    size_t (*rows)(const widen_remap_job *job, int stream);
    /* fp32 arithmetic on short cache-resident blocks (SCALE, MEAN, SUM, NORMAL): one IEEE operation
     * per step, in this order, so every ISA rounds alike */
    void (*mul_f32)(float *x, size_t n, float s);
    void (*add_f32)(float *acc, const float *x, size_t n);
    void (*div_f32)(float *x, size_t n, float d);
    /* out[i] = std * (sqrt(-2 * log(u1)) * cos(6.2831855f * u2)) with SLEEF's cinz functions */
    void (*normal_f32)(float *out, size_t n, float std, uint64_t seed, uint64_t index);
    void (*fence)(void); /* after streaming stores; NULL if none are needed */
    /* XXH3-128, streaming: the same digest on every ISA */
    void (*hash_reset)(widen_hash_state *state);
    void (*hash_update)(widen_hash_state *state, const void *data, size_t len);
    widen_hash128 (*hash_digest)(const widen_hash_state *state);
} widen_kernels;

/* The convert table of an ISA file whose six converts are named f32_to_f16, f32_to_bf16, ... */
#define WIDEN_CONVERT_ENTRIES                                                                      \
    {                                                                                              \
        [WIDEN_CK_F32] = {[WIDEN_CK_F16] = f32_to_f16, [WIDEN_CK_BF16] = f32_to_bf16},             \
        [WIDEN_CK_F16] = {[WIDEN_CK_F32] = f16_to_f32, [WIDEN_CK_BF16] = f16_to_bf16},             \
        [WIDEN_CK_BF16] = {[WIDEN_CK_F32] = bf16_to_f32, [WIDEN_CK_F16] = bf16_to_f16},            \
    }

/* The registry: X(ISA enum, table symbol). Adding an ISA is one file and one line here. */
#if defined(__x86_64__)
#define WIDEN_ARCH_KERNELS(X) X(WIDEN_ISA_AVX2, widen_kernels_avx2) X(WIDEN_ISA_AVX512, widen_kernels_avx512)
#elif defined(__aarch64__)
#define WIDEN_ARCH_KERNELS(X) X(WIDEN_ISA_NEON, widen_kernels_neon)
#else
#define WIDEN_ARCH_KERNELS(X)
#endif
#define WIDEN_KERNEL_REGISTRY(X) X(WIDEN_ISA_SCALAR, widen_kernels_scalar) WIDEN_ARCH_KERNELS(X)

#define WIDEN_DECLARE_KERNELS(isa, table) extern const widen_kernels table;
WIDEN_KERNEL_REGISTRY(WIDEN_DECLARE_KERNELS)
#undef WIDEN_DECLARE_KERNELS

/* Runs a validated job through k: the rows kernel where it applies, else run by run. */
void widen_remap_run(const widen_kernels *k, const widen_remap_job *job);

/* The kernel table of `isa`, or NULL if this build has none. */
const widen_kernels *widen_kernels_for(widen_isa isa);

/* Element index in the convert table, or -1 for a dtype widen does not compute on. */
int widen_compute_index(widen_dtype dtype);

/* Scalar conversions of one element: the reference every ISA must match bit for bit. */
uint16_t widen_f32_to_f16(uint32_t f);
uint32_t widen_f16_to_f32(uint16_t h);
uint16_t widen_f32_to_bf16(uint32_t f);
uint32_t widen_bf16_to_f32(uint16_t b);

/* The bytes of a const fill `value` in `dtype` (F32, F16 or BF16), zero-padded to 8. */
void widen_const_element(widen_dtype dtype, float value, unsigned char out[8]);

/* The generator's uniforms for elements index .. index+n-1 (u1 in (0,1], u2 in [0,1)). */
void widen_normal_uniforms(float *u1, float *u2, size_t n, uint64_t seed, uint64_t index);
/* The scalar reference of normal_f32, which SIMD tails also use. */
void widen_normal_scalar(float *out, size_t n, float std, uint64_t seed, uint64_t index);

/* normal_f32 for an ISA: blocks of uniforms, then LANES at a time through that ISA's SLEEF cinz
 * functions in the scalar reference's order of operations; the tail through the reference. */
#define WIDEN_DEFINE_NORMAL(name, VEC, LANES, LOAD, STORE, SET1, MUL, LOG, SQRT, COS)               \
    static void name(float *out, size_t n, float std, uint64_t seed, uint64_t index)               \
    {                                                                                              \
        enum { B = 64 };                                                                           \
        float u1[B], u2[B];                                                                        \
        size_t at = 0;                                                                             \
        for (; at + B <= n; at += B) {                                                             \
            widen_normal_uniforms(u1, u2, B, seed, index + at);                                    \
            for (size_t i = 0; i < B; i += LANES) {                                                \
                VEC r = SQRT(MUL(SET1(-2.0f), LOG(LOAD(u1 + i))));                                 \
                VEC c = COS(MUL(SET1(6.2831855f), LOAD(u2 + i)));                                  \
                STORE(out + at + i, MUL(SET1(std), MUL(r, c)));                                    \
            }                                                                                      \
        }                                                                                          \
        widen_normal_scalar(out + at, n - at, std, seed, index + at);                              \
    }

/* Scalar conversions of n elements (unaligned), for SIMD tails and the scalar table. */
void widen_convert_scalar(int from, int to, void *dst, const void *src, size_t n);

/* Shared by the AVX2 and AVX-512 kernels (both compiled with AVX2): the short-row byte permutation,
 * and the cached copy of fewer than WIDEN_SHORT_COPY bytes (avx2.c says why it is not memcpy). */
size_t widen_rows_avx2(const widen_remap_job *job, int stream);
void widen_copy_short_avx2(unsigned char *d, const unsigned char *s, size_t n);

#endif
