/* arith.h: the fp32 block arithmetic of SCALE, MEAN and SUM, written once as plain loops and
 * included by each ISA's file, where the compiler vectorises them for that file's target. One IEEE
 * operation per element, so every ISA rounds alike. */
#ifndef WIDEN_ARITH_H
#define WIDEN_ARITH_H

#include <stddef.h>

static void mul_f32(float *x, size_t n, float s)
{
    for (size_t i = 0; i < n; i++) x[i] = x[i] * s;
}

static void add_f32(float *acc, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) acc[i] = acc[i] + x[i];
}

static void div_f32(float *x, size_t n, float d)
{
    for (size_t i = 0; i < n; i++) x[i] = x[i] / d;
}

#define WIDEN_ARITH_ENTRIES .mul_f32 = mul_f32, .add_f32 = add_f32, .div_f32 = div_f32

#endif
