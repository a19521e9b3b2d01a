/* avx512.c: AVX-512 (F, BW, VL) kernels; short rows use VBMI's byte permute where the CPU has it.
 * Compiled with -mavx512f -mavx512bw -mavx512vl (plus the AVX2 set); called only where dispatch found
 * them. No AVX512-BF16 instruction is used: vcvtneps2bf16 flushes denormals, which the reference
 * keeps. Tails go through the scalar reference functions. */
#include <immintrin.h>
#include <sleef.h>
#include <string.h>

#include "../dispatch/cpu.h"
#include "kernels.h"
#include "xxh3.h"
#include "arith.h"

#define V 64
#define PREFETCH 1024 /* bytes ahead: streaming stores do not pull the source in early by themselves */

/* Whole cache lines with streaming stores: d on a line, bytes a multiple of V (one line). Long runs
 * go four pages at a time, as glibc's large memcpy does: four load streams in flight (each
 * prefetched one step ahead) keep more of the memory system busy than one stream. */
static void stream_lines(unsigned char *d, const unsigned char *s, size_t bytes)
{
    enum { PAGE = 4096, STEP = 4 * V };
    for (; bytes >= 4 * PAGE; bytes -= 4 * PAGE, d += 4 * PAGE, s += 4 * PAGE)
        for (size_t i = 0; i < PAGE; i += STEP)
            for (size_t p = 0; p < 4 * PAGE; p += PAGE) {
                const unsigned char *from = s + p + i;
                for (size_t l = 0; l < STEP; l += V) _mm_prefetch((const char *)from + STEP + l, _MM_HINT_T0);
                __m512i a = _mm512_loadu_si512(from), b = _mm512_loadu_si512(from + V);
                __m512i c = _mm512_loadu_si512(from + 2 * V), e = _mm512_loadu_si512(from + 3 * V);
                _mm512_stream_si512((void *)(d + p + i), a);
                _mm512_stream_si512((void *)(d + p + i + V), b);
                _mm512_stream_si512((void *)(d + p + i + 2 * V), c);
                _mm512_stream_si512((void *)(d + p + i + 3 * V), e);
            }
    for (; bytes >= V; bytes -= V, d += V, s += V) {
        _mm_prefetch((const char *)s + PREFETCH, _MM_HINT_T0);
        _mm512_stream_si512((void *)d, _mm512_loadu_si512(s));
    }
}

/* Streaming: ordinary stores up to the first line boundary, whole lines streamed, ordinary stores
 * for the rest. */
static void copy_avx512(void *dst, const void *src, size_t bytes, int stream)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t head = (V - ((uintptr_t)d & (V - 1))) & (V - 1);
    if (!stream && bytes < WIDEN_SHORT_COPY) {
        widen_copy_short_avx2(d, s, bytes);
        return;
    }
    if (!stream || bytes < head + V) {
        memcpy(dst, src, bytes);
        return;
    }
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    size_t lines = bytes & ~(size_t)(V - 1);
    stream_lines(d, s, lines);
    memcpy(d + lines, s + lines, bytes - lines);
}

static inline void store512(unsigned char *p, __m512i v, int stream)
{
    if (stream) _mm512_stream_si512((void *)p, v);
    else _mm512_storeu_si512(p, v);
}

static inline void store256(unsigned char *p, __m256i v, int stream)
{
    if (stream) _mm256_stream_si256((__m256i *)p, v);
    else _mm256_storeu_si256((__m256i *)p, v);
}

static void fill_avx512(void *dst, size_t bytes, const unsigned char *pattern, size_t size, int stream)
{
    unsigned char *d = dst;
    size_t head = stream ? (V - ((uintptr_t)d & (V - 1))) & (V - 1) : 0;
    if (head > bytes) head = bytes;
    memcpy(d, pattern, head);
    pattern += head % size; /* the phase the aligned part starts at */
    d += head, bytes -= head;
    __m512i v = _mm512_loadu_si512(pattern);
    for (; bytes >= V; bytes -= V, d += V) store512(d, v, stream);
    memcpy(d, pattern, bytes);
}

/* F32 bits -> BF16 bits, 16 lanes (as widen_f32_to_bf16). */
static inline __m256i bf16_from_f32(__m512i x)
{
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

static inline __m512i f32_from_bf16(__m256i h)
{
    return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
}

#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(p))

#define CONVERT_AVX512(name, FROM, TO, in_size, out_size, STORE, body)                             \
    static void name(void *dst, const void *src, size_t n, int stream)                             \
    {                                                                                              \
        const unsigned char *s = src;                                                              \
        unsigned char *d = dst;                                                                    \
        size_t i = 0;                                                                              \
        if (stream) { /* align the stores: a scalar head, or no streaming for odd addresses */     \
            size_t w = V, mis = (uintptr_t)d % w; /* a whole cache line */                         \
            if (mis % out_size) {                                                                  \
                stream = 0;                                                                        \
            } else {                                                                               \
                i = ((w - mis) % w) / out_size;                                                    \
                if (i > n) i = n;                                                                  \
                widen_convert_scalar(WIDEN_CK_##FROM, WIDEN_CK_##TO, d, s, i);                     \
            }                                                                                      \
        }                                                                                          \
        for (; i + 16 <= n; i += 16) {                                                             \
            const unsigned char *in = s + i * in_size;                                             \
            STORE(d + i * out_size, body, stream);                                                 \
        }                                                                                          \
        widen_convert_scalar(WIDEN_CK_##FROM, WIDEN_CK_##TO, d + i * out_size, s + i * in_size, n - i); \
    }

CONVERT_AVX512(f32_to_f16, F32, F16, 4, 2, store256, _mm512_cvtps_ph(_mm512_loadu_ps(in), _MM_FROUND_TO_NEAREST_INT))
CONVERT_AVX512(f32_to_bf16, F32, BF16, 4, 2, store256, bf16_from_f32(_mm512_loadu_si512(in)))
CONVERT_AVX512(f16_to_f32, F16, F32, 2, 4, store512, _mm512_castps_si512(_mm512_cvtph_ps(LOAD256(in))))
CONVERT_AVX512(bf16_to_f32, BF16, F32, 2, 4, store512, f32_from_bf16(LOAD256(in)))
CONVERT_AVX512(f16_to_bf16, F16, BF16, 2, 2, store256, bf16_from_f32(_mm512_castps_si512(_mm512_cvtph_ps(LOAD256(in)))))
CONVERT_AVX512(bf16_to_f16, BF16, F16, 2, 2, store256,
               _mm512_cvtps_ph(_mm512_castsi512_ps(f32_from_bf16(LOAD256(in))), _MM_FROUND_TO_NEAREST_INT))

/* Short rows: one vpermb per 64-byte step, fill bytes zeroed by its mask, the fill pattern OR'ed in.
 * Where each step reads 48 bytes (3 -> 4 channels of F32 or of a 16-bit type along the last axis),
 * four steps share three loads at a 64-byte stride: unaligned loads at a 48-byte stride cross a cache
 * line three times in four, and [16M,3] F32 read 0.79-0.86 x memcpy that way, 0.99-1.21 this way
 * (streaming stores; README). */
__attribute__((target("avx512vbmi"))) static size_t rows_vbmi(const widen_remap_job *job, int stream)
{
    widen_rows_plan p;
    if (!widen_rows_plan_build(job, V, &p)) return 0;
    uint8_t index[V];
    __mmask64 keep = 0;
    int16_t last = -1; /* the highest byte a step reads */
    for (int b = 0; b < V; b++) {
        index[b] = p.source[b] < 0 ? 0 : (uint8_t)p.source[b];
        if (p.source[b] >= 0) keep |= (__mmask64)1 << b;
        if (p.source[b] > last) last = p.source[b];
    }
    __m512i vindex = _mm512_loadu_si512(index), vfill = _mm512_loadu_si512(p.fill);
    const unsigned char *s = job->src;
    unsigned char *d = job->dst;
    stream = stream && p.out_step == V && ((uintptr_t)d & (V - 1)) == 0;
    size_t i = 0;
    if (p.in_step == 48 && p.out_step == V && last < 48) { /* no byte read from the next step's rows */
        /* three input rows of vectors feed four output vectors: three loads per four steps, each a
         * two-source permute (vpermt2b) of the pair that holds its 48 bytes */
        __m512i i0 = vindex, i1 = _mm512_add_epi8(vindex, _mm512_set1_epi8(48));
        __m512i i2 = _mm512_add_epi8(vindex, _mm512_set1_epi8(32)), i3 = _mm512_add_epi8(vindex, _mm512_set1_epi8(80));
        for (; i + 4 <= p.steps; i += 4) {
            const unsigned char *q = s + i * 48;
            _mm_prefetch((const char *)q + PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)q + PREFETCH + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)q + PREFETCH + 128, _MM_HINT_T0);
            __m512i a = _mm512_loadu_si512(q), b = _mm512_loadu_si512(q + 64), c = _mm512_loadu_si512(q + 128);
            unsigned char *o = d + i * V;
            store512(o, _mm512_or_si512(_mm512_maskz_permutex2var_epi8(keep, a, i0, b), vfill), stream);
            store512(o + V, _mm512_or_si512(_mm512_maskz_permutex2var_epi8(keep, a, i1, b), vfill), stream);
            store512(o + 2 * V, _mm512_or_si512(_mm512_maskz_permutex2var_epi8(keep, b, i2, c), vfill), stream);
            store512(o + 3 * V, _mm512_or_si512(_mm512_maskz_permutex2var_epi8(keep, b, i3, c), vfill), stream);
        }
    }
    for (; i < p.steps; i++) {
        _mm_prefetch((const char *)s + i * p.in_step + PREFETCH, _MM_HINT_T0);
        __m512i v = _mm512_maskz_permutexvar_epi8(keep, vindex, _mm512_loadu_si512(s + i * p.in_step));
        store512(d + i * p.out_step, _mm512_or_si512(v, vfill), stream);
    }
    return p.steps * p.rows_per_step;
}

static size_t rows_avx512(const widen_remap_job *job, int stream)
{
    return widen_cpu_get()->avx512vbmi ? rows_vbmi(job, stream) : widen_rows_avx2(job, stream);
}

#define COS_AVX512(x) Sleef_cinz_sincosf16_u10avx512fnofma(x).y
WIDEN_DEFINE_NORMAL(normal_avx512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps,
                    Sleef_cinz_logf16_u10avx512fnofma, Sleef_cinz_sqrtf16_u05avx512fnofma, COS_AVX512)

static void fence_avx512(void)
{
    _mm_sfence();
}

WIDEN_DEFINE_HASH(avx512)

const widen_kernels widen_kernels_avx512 = {
    .isa = WIDEN_ISA_AVX512,
    .copy = copy_avx512,
    .fill = fill_avx512,
    .convert = WIDEN_CONVERT_ENTRIES,
    .rows = rows_avx512,
    WIDEN_ARITH_ENTRIES,
    .normal_f32 = normal_avx512,
    .fence = fence_avx512,
    WIDEN_HASH_ENTRIES(avx512),
};
