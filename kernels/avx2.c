/* avx2.c: AVX2 kernels (with F16C for F16 conversions). Compiled with -mavx2 -mfma -mf16c; called
 * only where dispatch found those features. Tails go through the scalar reference functions. */
#include <immintrin.h>
#include <sleef.h>
#include <string.h>

#include "kernels.h"
#include "xxh3.h"
#include "arith.h"

#define V 32     /* vector bytes */
#define LINE 64 /* streaming stores start on a cache line: partial lines written that way are slow */
#define PREFETCH 1024 /* bytes ahead: streaming stores do not pull the source in early by themselves */

/* Whole cache lines with streaming stores: d on a line, bytes a multiple of LINE. Long runs go four
 * pages at a time, as glibc's large memcpy does: four load streams in flight (each prefetched one
 * step ahead) keep more of the memory system busy than one stream with a far prefetch. */
static void stream_lines(unsigned char *d, const unsigned char *s, size_t bytes)
{
    enum { PAGE = 4096, STEP = 4 * V };
    for (; bytes >= 4 * PAGE; bytes -= 4 * PAGE, d += 4 * PAGE, s += 4 * PAGE)
        for (size_t i = 0; i < PAGE; i += STEP)
            for (size_t p = 0; p < 4 * PAGE; p += PAGE) {
                const unsigned char *from = s + p + i;
                _mm_prefetch((const char *)from + STEP, _MM_HINT_T0);
                _mm_prefetch((const char *)from + STEP + LINE, _MM_HINT_T0);
                __m256i a = _mm256_loadu_si256((const __m256i *)from), b = _mm256_loadu_si256((const __m256i *)(from + V));
                __m256i c = _mm256_loadu_si256((const __m256i *)(from + 2 * V));
                __m256i e = _mm256_loadu_si256((const __m256i *)(from + 3 * V));
                _mm256_stream_si256((__m256i *)(d + p + i), a);
                _mm256_stream_si256((__m256i *)(d + p + i + V), b);
                _mm256_stream_si256((__m256i *)(d + p + i + 2 * V), c);
                _mm256_stream_si256((__m256i *)(d + p + i + 3 * V), e);
            }
    for (; bytes >= LINE; bytes -= LINE, d += LINE, s += LINE) {
        _mm_prefetch((const char *)s + PREFETCH, _MM_HINT_T0);
        __m256i a = _mm256_loadu_si256((const __m256i *)s), b = _mm256_loadu_si256((const __m256i *)(s + V));
        _mm256_stream_si256((__m256i *)d, a);
        _mm256_stream_si256((__m256i *)(d + V), b);
    }
}

/* A short copy with ordinary stores (under WIDEN_SHORT_COPY bytes): four 32-byte loads and stores a
 * step, the last vector overlapping the one before. glibc 2.36's memmove (the AVX-512 variant it
 * picks on the AMD VM measured) moved runs of 1 to 4 KiB, the rows of a stem [out, 3, k, k], at about
 * half the speed of the naive loop's shorter memcpy calls (README, kernel table); it stays the copy
 * for longer runs. Also the AVX-512 kernels' short copy: on that core, 64-byte steps were no faster. */
void widen_copy_short_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
    if (n < V) {
        memcpy(d, s, n);
        return;
    }
    size_t i = 0;
    for (; i + 4 * V <= n; i += 4 * V) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + i)), b = _mm256_loadu_si256((const __m256i *)(s + i + V));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 2 * V));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 3 * V));
        _mm256_storeu_si256((__m256i *)(d + i), a);
        _mm256_storeu_si256((__m256i *)(d + i + V), b);
        _mm256_storeu_si256((__m256i *)(d + i + 2 * V), c);
        _mm256_storeu_si256((__m256i *)(d + i + 3 * V), e);
    }
    for (; i + V <= n; i += V) _mm256_storeu_si256((__m256i *)(d + i), _mm256_loadu_si256((const __m256i *)(s + i)));
    if (i < n) _mm256_storeu_si256((__m256i *)(d + n - V), _mm256_loadu_si256((const __m256i *)(s + n - V)));
}

/* Streaming: ordinary stores up to the first line boundary, whole lines streamed, ordinary stores
 * for the rest. */
static void copy_avx2(void *dst, const void *src, size_t bytes, int stream)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t head = (LINE - ((uintptr_t)d & (LINE - 1))) & (LINE - 1);
    if (!stream && bytes < WIDEN_SHORT_COPY) {
        widen_copy_short_avx2(d, s, bytes);
        return;
    }
    if (!stream || bytes < head + LINE) {
        memcpy(dst, src, bytes);
        return;
    }
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    size_t lines = bytes & ~(size_t)(LINE - 1);
    stream_lines(d, s, lines);
    memcpy(d + lines, s + lines, bytes - lines);
}

static void fill_avx2(void *dst, size_t bytes, const unsigned char *pattern, size_t size, int stream)
{
    unsigned char *d = dst;
    size_t head = stream ? (LINE - ((uintptr_t)d & (LINE - 1))) & (LINE - 1) : 0;
    if (head > bytes) head = bytes;
    memcpy(d, pattern, head);
    pattern += head % size; /* the phase the aligned part starts at */
    d += head, bytes -= head;
    __m256i v = _mm256_loadu_si256((const __m256i *)pattern);
    if (stream)
        for (; bytes >= V; bytes -= V, d += V) _mm256_stream_si256((__m256i *)d, v);
    else
        for (; bytes >= V; bytes -= V, d += V) _mm256_storeu_si256((__m256i *)d, v);
    memcpy(d, pattern, bytes);
}

/* F32 bits -> BF16 bits, 8 lanes in 32-bit lanes: round to nearest even, NaN quieted (as
 * widen_f32_to_bf16). */
static inline __m256i bf16_lanes(__m256i x)
{
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(_mm256_castsi256_ps(x), _mm256_castsi256_ps(x), _CMP_UNORD_Q));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(rounded, quiet, nan);
}

/* Two vectors of 8 F32 -> 16 BF16: one pack and one lane fix-up for both. */
static inline __m256i bf16_from_f32x2(__m256i a, __m256i b)
{
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_lanes(a), bf16_lanes(b)), 0xd8);
}

static inline __m256i f16_from_f32x2(__m256 a, __m256 b)
{
    return _mm256_set_m128i(_mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
}

static inline __m256i f32_from_bf16(__m128i h)
{
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
}

static inline void store256(unsigned char *p, __m256i v, int stream)
{
    if (stream) _mm256_stream_si256((__m256i *)p, v);
    else _mm256_storeu_si256((__m256i *)p, v);
}

#define LOAD128(p) _mm_loadu_si128((const __m128i *)(p))
#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(p))
#define F32(p) _mm256_castsi256_ps(LOAD256(p))
#define F16_TO_F32(p) _mm256_cvtph_ps(LOAD128(p))
#define BF16_TO_F32(p) _mm256_castsi256_ps(f32_from_bf16(LOAD128(p)))

/* STEP elements (32 output bytes) per iteration; `stream` stores go through a scalar head that
 * aligns the destination to a cache line. */
#define CONVERT_AVX2(name, FROM, TO, in_size, out_size, body)                                      \
    static void name(void *dst, const void *src, size_t n, int stream)                             \
    {                                                                                              \
        const size_t step = V / out_size;                                                          \
        const unsigned char *s = src;                                                              \
        unsigned char *d = dst;                                                                    \
        size_t i = 0;                                                                              \
        if (stream) { /* align the stores: a scalar head, or no streaming for odd addresses */     \
            size_t mis = (uintptr_t)d % LINE;                                                      \
            if (mis % out_size) {                                                                  \
                stream = 0;                                                                        \
            } else {                                                                               \
                i = ((LINE - mis) % LINE) / out_size;                                              \
                if (i > n) i = n;                                                                  \
                widen_convert_scalar(WIDEN_CK_##FROM, WIDEN_CK_##TO, d, s, i);                     \
            }                                                                                      \
        }                                                                                          \
        for (; i + step <= n; i += step) {                                                         \
            const unsigned char *in = s + i * in_size;                                             \
            store256(d + i * out_size, body, stream);                                              \
        }                                                                                          \
        widen_convert_scalar(WIDEN_CK_##FROM, WIDEN_CK_##TO, d + i * out_size, s + i * in_size, n - i); \
    }

CONVERT_AVX2(f32_to_f16, F32, F16, 4, 2, f16_from_f32x2(F32(in), F32(in + 32)))
CONVERT_AVX2(f32_to_bf16, F32, BF16, 4, 2, bf16_from_f32x2(LOAD256(in), LOAD256(in + 32)))
CONVERT_AVX2(f16_to_f32, F16, F32, 2, 4, _mm256_castps_si256(F16_TO_F32(in)))
CONVERT_AVX2(bf16_to_f32, BF16, F32, 2, 4, f32_from_bf16(LOAD128(in)))
CONVERT_AVX2(f16_to_bf16, F16, BF16, 2, 2,
             bf16_from_f32x2(_mm256_castps_si256(F16_TO_F32(in)), _mm256_castps_si256(F16_TO_F32(in + 16))))
CONVERT_AVX2(bf16_to_f16, BF16, F16, 2, 2, f16_from_f32x2(BF16_TO_F32(in), BF16_TO_F32(in + 16)))

/* Short rows: each 16-byte output lane gathers at most 4 input dwords (vpermd), then bytes within
 * the lane (vpshufb, which zeroes fill bytes), then the fill pattern is OR'ed in. */
size_t widen_rows_avx2(const widen_remap_job *job, int stream)
{
    widen_rows_plan p;
    if (!widen_rows_plan_build(job, V, &p)) return 0;
    int32_t perm[8] = {0};
    uint8_t shuf[V];
    for (int lane = 0; lane < 2; lane++) {
        int dwords = 0;
        for (int b = 16 * lane; b < 16 * lane + 16; b++) {
            shuf[b] = 0x80;
            if (p.source[b] < 0) continue;
            int dw = p.source[b] / 4, slot = 0;
            while (slot < dwords && perm[4 * lane + slot] != dw) slot++;
            if (slot == dwords) {
                if (dwords == 4) return 0; /* a lane needs more than 4 dwords: not this kernel */
                perm[4 * lane + dwords++] = dw;
            }
            shuf[b] = (uint8_t)(4 * slot + p.source[b] % 4);
        }
    }
    __m256i vperm = _mm256_loadu_si256((const __m256i *)perm), vshuf = _mm256_loadu_si256((const __m256i *)shuf);
    __m256i vfill = _mm256_loadu_si256((const __m256i *)p.fill);
    const unsigned char *s = job->src;
    unsigned char *d = job->dst;
    stream = stream && p.out_step == V && ((uintptr_t)d & (V - 1)) == 0;
    for (size_t i = 0; i < p.steps; i++) {
        _mm_prefetch((const char *)s + i * p.in_step + PREFETCH, _MM_HINT_T0);
        __m256i v = _mm256_loadu_si256((const __m256i *)(s + i * p.in_step));
        v = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(v, vperm), vshuf), vfill);
        store256(d + i * p.out_step, v, stream);
    }
    return p.steps * p.rows_per_step;
}

#define COS_AVX2(x) Sleef_cinz_sincosf8_u10avx(x).y
WIDEN_DEFINE_NORMAL(normal_avx2, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps,
                    Sleef_cinz_logf8_u10avx, Sleef_cinz_sqrtf8_u05avx, COS_AVX2)

static void fence_avx2(void)
{
    _mm_sfence();
}

WIDEN_DEFINE_HASH(avx2)

const widen_kernels widen_kernels_avx2 = {
    .isa = WIDEN_ISA_AVX2,
    .copy = copy_avx2,
    .fill = fill_avx2,
    .convert = WIDEN_CONVERT_ENTRIES,
    .rows = widen_rows_avx2,
    WIDEN_ARITH_ENTRIES,
    .normal_f32 = normal_avx2,
    .fence = fence_avx2,
    WIDEN_HASH_ENTRIES(avx2),
};
