/* neon.c: NEON kernels (aarch64, where Advanced SIMD is always present). Conversions use the FP16
 * convert instructions (round to nearest even under the default FPCR, NaN quieted, denormals kept);
 * short rows use one TBL byte lookup per 16-byte step. Tails go through the scalar reference. */
#include <arm_neon.h>
#include <sleef.h>
#include <string.h>

#include "kernels.h"
#include "xxh3.h"
#include "arith.h"

#define V 16

static void copy_neon(void *dst, const void *src, size_t bytes, int stream)
{
    (void)stream; /* no streaming store that beats memcpy here */
    memcpy(dst, src, bytes);
}

static void fill_neon(void *dst, size_t bytes, const unsigned char *pattern, size_t size, int stream)
{
    (void)stream;
    (void)size;
    unsigned char *d = dst;
    uint8x16_t v = vld1q_u8(pattern);
    for (; bytes >= V; bytes -= V, d += V) vst1q_u8(d, v);
    memcpy(d, pattern, bytes);
}

static inline uint16x4_t bf16_from_f32(uint32x4_t x)
{
    uint32x4_t lsb = vandq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(1));
    uint32x4_t rounded = vshrq_n_u32(vaddq_u32(vaddq_u32(x, vdupq_n_u32(0x7fff)), lsb), 16);
    uint32x4_t nan = vcgtq_u32(vandq_u32(x, vdupq_n_u32(0x7fffffff)), vdupq_n_u32(0x7f800000));
    uint32x4_t quiet = vorrq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(0x40));
    return vmovn_u32(vbslq_u32(nan, quiet, rounded));
}

static inline uint32x4_t f32_from_bf16(uint16x4_t h)
{
    return vshll_n_u16(h, 16);
}

#define CONVERT_NEON(name, FROM, TO, in_size, out_size, body)                                      \
    static void name(void *dst, const void *src, size_t n, int stream)                             \
    {                                                                                              \
        (void)stream;                                                                              \
        const unsigned char *s = src;                                                              \
        unsigned char *d = dst;                                                                    \
        size_t i = 0;                                                                              \
        for (; i + 4 <= n; i += 4) {                                                               \
            const unsigned char *in = s + i * in_size;                                             \
            unsigned char *out = d + i * out_size;                                                 \
            body;                                                                                  \
        }                                                                                          \
        widen_convert_scalar(WIDEN_CK_##FROM, WIDEN_CK_##TO, d + i * out_size, s + i * in_size, n - i); \
    }

#define LD_F32(p) vld1q_f32((const float *)(const void *)(p))
#define LD_U32(p) vld1q_u32((const uint32_t *)(const void *)(p))
#define LD_U16(p) vld1_u16((const uint16_t *)(const void *)(p))
#define ST_U16(p, v) vst1_u16((uint16_t *)(void *)(p), v)
#define ST_U32(p, v) vst1q_u32((uint32_t *)(void *)(p), v)

CONVERT_NEON(f32_to_f16, F32, F16, 4, 2, ST_U16(out, vreinterpret_u16_f16(vcvt_f16_f32(LD_F32(in)))))
CONVERT_NEON(f32_to_bf16, F32, BF16, 4, 2, ST_U16(out, bf16_from_f32(LD_U32(in))))
CONVERT_NEON(f16_to_f32, F16, F32, 2, 4, ST_U32(out, vreinterpretq_u32_f32(vcvt_f32_f16(vreinterpret_f16_u16(LD_U16(in))))))
CONVERT_NEON(bf16_to_f32, BF16, F32, 2, 4, ST_U32(out, f32_from_bf16(LD_U16(in))))
CONVERT_NEON(f16_to_bf16, F16, BF16, 2, 2,
             ST_U16(out, bf16_from_f32(vreinterpretq_u32_f32(vcvt_f32_f16(vreinterpret_f16_u16(LD_U16(in)))))))
CONVERT_NEON(bf16_to_f16, BF16, F16, 2, 2,
             ST_U16(out, vreinterpret_u16_f16(vcvt_f16_f32(vreinterpretq_f32_u32(f32_from_bf16(LD_U16(in)))))))

/* Short rows: TBL looks each output byte up in the step's 16 input bytes; out-of-range indices
 * give zero, and the fill pattern is OR'ed in. */
static size_t rows_neon(const widen_remap_job *job, int stream)
{
    (void)stream;
    widen_rows_plan p;
    if (!widen_rows_plan_build(job, V, &p)) return 0;
    uint8_t index[V];
    for (int b = 0; b < V; b++) index[b] = p.source[b] < 0 ? 0xff : (uint8_t)p.source[b];
    uint8x16_t vindex = vld1q_u8(index), vfill = vld1q_u8(p.fill);
    const unsigned char *s = job->src;
    unsigned char *d = job->dst;
    for (size_t i = 0; i < p.steps; i++)
        vst1q_u8(d + i * p.out_step, vorrq_u8(vqtbl1q_u8(vld1q_u8(s + i * p.in_step), vindex), vfill));
    return p.steps * p.rows_per_step;
}

WIDEN_DEFINE_HASH(neon)

#define COS_NEON(x) Sleef_cinz_sincosf4_u10advsimdnofma(x).y
WIDEN_DEFINE_NORMAL(normal_neon, float32x4_t, 4, vld1q_f32, vst1q_f32, vdupq_n_f32, vmulq_f32,
                    Sleef_cinz_logf4_u10advsimdnofma, Sleef_cinz_sqrtf4_u05advsimdnofma, COS_NEON)

const widen_kernels widen_kernels_neon = {
    .isa = WIDEN_ISA_NEON,
    .copy = copy_neon,
    .fill = fill_neon,
    .convert = WIDEN_CONVERT_ENTRIES,
    .rows = rows_neon,
    WIDEN_ARITH_ENTRIES,
    .normal_f32 = normal_neon,
    WIDEN_HASH_ENTRIES(neon),
};
