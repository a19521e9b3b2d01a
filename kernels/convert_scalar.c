/* convert_scalar.c: F32/F16/BF16 conversions of one element, the bit-exact reference. */
#include "kernels.h"

/* IEEE 754 convertFormat with round to nearest even; a NaN keeps its sign and leading payload bits
 * and is quieted, as F16C's vcvtps2ph does. Denormals are kept, never flushed. */
uint16_t widen_f32_to_f16(uint32_t f)
{
    uint16_t sign = (uint16_t)((f >> 16) & 0x8000u);
    uint32_t a = f & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to infinity */
    if (a < 0x38800000u) {                                     /* below 2^-14: f16 subnormal */
        uint32_t e = a >> 23;
        if (e < 102) return sign; /* below 2^-25: rounds to zero */
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* value / 2^-24 = mant >> shift */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u; /* rebias the exponent from 127 to 15 */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

uint32_t widen_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0);
    if (e == 0) {
        if (m == 0) return sign;
        uint32_t s = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            s++;
        }
        return sign | ((113 - s) << 23) | ((m & 0x3ffu) << 13);
    }
    return sign | ((e + 112) << 23) | (m << 13);
}

/* Quiets NaNs the way AVX-512 BF16's vcvtneps2bf16 does; unlike it, keeps denormals. */
uint16_t widen_f32_to_bf16(uint32_t f)
{
    if ((f & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((f >> 16) | 0x40u);
    return (uint16_t)((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

uint32_t widen_bf16_to_f32(uint16_t b)
{
    return (uint32_t)b << 16;
}

int widen_compute_index(widen_dtype dtype)
{
    switch (dtype) {
    case WIDEN_F32: return WIDEN_CK_F32;
    case WIDEN_F16: return WIDEN_CK_F16;
    case WIDEN_BF16: return WIDEN_CK_BF16;
    default: return -1;
    }
}
