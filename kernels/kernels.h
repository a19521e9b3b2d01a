/* kernels.h: the kernel contract every ISA implements, and the registry that lists the ISAs. */
#ifndef WIDEN_KERNELS_H
#define WIDEN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "widen/widen.h"

/* Index of a computable dtype in the convert table: F32, F16, BF16. */
enum { WIDEN_CK_F32, WIDEN_CK_F16, WIDEN_CK_BF16, WIDEN_CK_COUNT };

typedef void (*widen_convert_fn)(void *dst, const void *src, size_t n);

/* One ISA's kernels. Run-level primitives (the libyuv "row" model): the shared driver walks a remap
 * job's rows and channels and calls them on contiguous runs of `inner` elements. An ISA may also
 * provide a whole-job `remap` for shapes where runs are too short (e.g. inner == 1); it must give the
 * same bytes as the driver. */
typedef struct widen_kernels {
    widen_isa isa;
    /* dst = src, `bytes` bytes, no alignment assumed */
    void (*copy)(void *dst, const void *src, size_t bytes);
    /* n copies of an element of `size` bytes (1, 2, 4 or 8) */
    void (*fill)(void *dst, size_t n, const void *element, size_t size);
    /* convert[from][to], from != to: n elements, round to nearest even, NaN quieted */
    widen_convert_fn convert[WIDEN_CK_COUNT][WIDEN_CK_COUNT];
    /* optional whole-job kernel, NULL: the generic driver */
    void (*remap)(const struct widen_kernels *kernels, const widen_remap_job *job);
} widen_kernels;

/* The registry: X(ISA enum, table symbol). Adding an ISA is one file and one line here. */
#define WIDEN_KERNEL_REGISTRY(X) X(WIDEN_ISA_SCALAR, widen_kernels_scalar)

#define WIDEN_DECLARE_KERNELS(isa, table) extern const widen_kernels table;
WIDEN_KERNEL_REGISTRY(WIDEN_DECLARE_KERNELS)
#undef WIDEN_DECLARE_KERNELS

/* The generic driver: runs a validated job through k's run primitives. */
void widen_remap_generic(const widen_kernels *k, const widen_remap_job *job);

/* The kernel table of `isa`, or NULL if this build has none. */
const widen_kernels *widen_kernels_for(widen_isa isa);

/* Element index in the convert table, or -1 for a dtype widen does not compute on. */
int widen_compute_index(widen_dtype dtype);

/* Scalar conversions of one element: the reference every ISA must match bit for bit. */
uint16_t widen_f32_to_f16(uint32_t f);
uint32_t widen_f16_to_f32(uint16_t h);
uint16_t widen_f32_to_bf16(uint32_t f);
uint32_t widen_bf16_to_f32(uint16_t b);

#endif
