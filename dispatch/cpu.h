/* cpu.h: what the CPU and the OS let widen run. */
#ifndef WIDEN_CPU_H
#define WIDEN_CPU_H

typedef struct widen_cpu {
    /* x86: feature bit set AND the OS saves the register state (XCR0) */
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vbmi, avx512bf16;
    /* aarch64 */
    int neon;
} widen_cpu;

/* Detected once; never changes afterwards. */
const widen_cpu *widen_cpu_get(void);

#endif
