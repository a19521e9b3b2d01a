/* dispatch.c: the kernel table in use, chosen once per process from the CPU and WIDEN_ISA. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/kernels.h"
#include "../src/error.h"
#include "cpu.h"

static const char *const isa_names[WIDEN_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

const char *widen_isa_name(widen_isa isa)
{
    return (unsigned)isa < WIDEN_ISA_COUNT ? isa_names[isa] : NULL;
}

static int cpu_runs(widen_isa isa)
{
    const widen_cpu *c = widen_cpu_get();
    switch (isa) {
    case WIDEN_ISA_SCALAR: return 1;
    case WIDEN_ISA_AVX2: return c->avx2 && c->fma && c->f16c;
    case WIDEN_ISA_AVX512: return c->avx512f && c->avx512bw && c->avx512vl && c->avx2 && c->fma && c->f16c;
    case WIDEN_ISA_NEON: return c->neon;
    default: return 0;
    }
}

const widen_kernels *widen_kernels_for(widen_isa isa)
{
#define WIDEN_TABLE_CASE(id, table) \
    if (isa == id) return &table;
    WIDEN_KERNEL_REGISTRY(WIDEN_TABLE_CASE)
#undef WIDEN_TABLE_CASE
    return NULL;
}

int widen_isa_usable(widen_isa isa)
{
    return (unsigned)isa < WIDEN_ISA_COUNT && widen_kernels_for(isa) && cpu_runs(isa);
}

static char features_text[160];
static pthread_once_t features_once = PTHREAD_ONCE_INIT;

static void list_features(void)
{
    const widen_cpu *c = widen_cpu_get();
    const struct {
        int on;
        const char *name;
    } f[] = {{c->avx2, "avx2"},         {c->fma, "fma"},           {c->f16c, "f16c"},
             {c->avx512f, "avx512f"},   {c->avx512bw, "avx512bw"}, {c->avx512vl, "avx512vl"},
             {c->avx512vbmi, "avx512vbmi"}, {c->avx512bf16, "avx512bf16"}, {c->neon, "neon"}};
    size_t used = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].on)
            used += (size_t)snprintf(features_text + used, sizeof features_text - used, "%s%s",
                                     used ? " " : "", f[i].name);
}

const char *widen_cpu_features(void)
{
    pthread_once(&features_once, list_features);
    return features_text;
}

static size_t stream_bytes;
static pthread_once_t stream_once = PTHREAD_ONCE_INIT;

static void find_stream_threshold(void)
{
    /* Measured (bench/kernel_table.py): streaming stores win from about 32 MiB of output even where a
     * VM reports a far larger last-level cache; below the real cache size they lose. */
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
    stream_bytes = (size_t)32 << 20;
    if (llc >= (1 << 20) && (size_t)llc < stream_bytes) stream_bytes = (size_t)llc;
}

size_t widen_stream_threshold(void)
{
    pthread_once(&stream_once, find_stream_threshold);
    return stream_bytes;
}

static widen_isa active = WIDEN_ISA_SCALAR;
static widen_error init_error;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void choose(void)
{
    const char *forced = getenv("WIDEN_ISA");
    if (forced && *forced) {
        for (unsigned i = 0; i < WIDEN_ISA_COUNT; i++) {
            if (strcmp(forced, isa_names[i]) != 0) continue;
            if (!cpu_runs((widen_isa)i))
                widen_fail(&init_error, WIDEN_EUSAGE, "WIDEN_ISA=%s: this CPU lacks %s (it offers: %s)",
                           forced, forced, *widen_cpu_features() ? widen_cpu_features() : "nothing beyond scalar");
            else if (!widen_kernels_for((widen_isa)i))
                widen_fail(&init_error, WIDEN_EUSAGE, "WIDEN_ISA=%s: this build of widen has no %s kernels",
                           forced, forced);
            else
                active = (widen_isa)i;
            return;
        }
        widen_fail(&init_error, WIDEN_EUSAGE, "WIDEN_ISA=%s: unknown ISA (use scalar, avx2, avx512 or neon)",
                   forced);
        return;
    }
    for (int i = WIDEN_ISA_COUNT - 1; i >= 0; i--) {
        if (widen_isa_usable((widen_isa)i)) {
            active = (widen_isa)i;
            return;
        }
    }
}

widen_status widen_isa_init(widen_error *err)
{
    pthread_once(&init_once, choose);
    if (init_error.status) {
        if (err) *err = init_error;
        return init_error.status;
    }
    return WIDEN_OK;
}

widen_isa widen_isa_active(void)
{
    widen_isa_init(NULL);
    return active;
}
