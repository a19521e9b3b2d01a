/* cpu.c: CPU feature detection: cpuid feature bits, then OSXSAVE, then the XCR0 state mask (x86);
 * getauxval hardware capabilities (aarch64). */
#include <pthread.h>
#include <stdint.h>

#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect(widen_cpu *cpu)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return;
    uint64_t xcr0 = read_xcr0();
    int os_avx = (xcr0 & 0x6) == 0x6;                   /* XMM and YMM state */
    int os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;    /* opmask, ZMM_Hi256, Hi16_ZMM */
    if (!os_avx) return;
    if (__get_cpuid_max(0, 0) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    cpu->fma = fma;
    cpu->f16c = f16c;
    cpu->avx2 = (b >> 5) & 1;
    if (os_avx512) {
        cpu->avx512f = (b >> 16) & 1;
        cpu->avx512bw = (b >> 30) & 1;
        cpu->avx512vl = (b >> 31) & 1;
        cpu->avx512vbmi = (c >> 1) & 1;
        unsigned a1, b1, c1, d1;
        __cpuid_count(7, 1, a1, b1, c1, d1);
        cpu->avx512bf16 = (a1 >> 5) & 1;
    }
}
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
static void detect(widen_cpu *cpu)
{
    cpu->neon = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
}
#else
static void detect(widen_cpu *cpu)
{
    (void)cpu;
}
#endif

static widen_cpu cpu_state;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void detect_once(void)
{
    detect(&cpu_state);
}

const widen_cpu *widen_cpu_get(void)
{
    pthread_once(&cpu_once, detect_once);
    return &cpu_state;
}
