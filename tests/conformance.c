/* conformance.c: every ISA's kernels against the scalar reference, byte for byte, on random jobs
 * around every vector width: C = 1, inner = 1, odd sizes, 0 rows, unaligned pointers, every store
 * hint, views whose rows overlap or whose channels lie far apart, outputs pre-filled with garbage and
 * guard bytes checked. Runs natively and under qemu.
 *
 * The same for XXH3-128 hashing fed in random pieces.
 *
 *   widen_conformance [ISA|all] [CASES]      prints "N passed, M failed"; exit 1 on any failure */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "widen/widen.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t pick(const size_t *options, size_t count)
{
    return options[next() % count];
}

/* Random element bits, with the values conversions get wrong first: NaN payloads (quiet and
 * signalling), infinities, signed zeros, denormals, rounding ties, overflow edges. */
static void random_elements(unsigned char *p, size_t n, widen_dtype dtype)
{
    static const uint32_t f32[] = {0, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00001u, 0x7f800001u,
                                   0xffa5a5a5u, 1, 0x807fffffu, 0x477ff000u, 0x477fefffu, 0x33000000u,
                                   0x33000001u, 0x38800000u, 0x387fffffu, 0x3f808000u, 0x3f818000u, 0x7f7fffffu};
    static const uint16_t h16[] = {0, 0x8000, 0x7c00, 0xfc00, 0x7c01, 0x7e00, 0xfd55, 1, 0x83ff, 0x7bff, 0x7f80, 0x7f81, 0xffd5};
    size_t size = widen_dtype_bits(dtype) / 8;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next();
        if (next() % 4 == 0) {
            if (size == 4) r = f32[next() % (sizeof f32 / sizeof f32[0])];
            if (size == 2) r = h16[next() % (sizeof h16 / sizeof h16[0])];
        }
        memcpy(p + i * size, &r, size);
    }
}

static const float consts[] = {0.0f, -0.0f, 1.0f, 0.1f, -65519.0f, 65520.0f, 1e-7f, 3.0e38f, 1e-40f};

typedef struct pair {
    widen_dtype src, dst;
} pair;

static const pair pairs[] = {
    {WIDEN_U8, WIDEN_U8},     {WIDEN_I16, WIDEN_I16},   {WIDEN_F16, WIDEN_F16},   {WIDEN_BF16, WIDEN_BF16},
    {WIDEN_F32, WIDEN_F32},   {WIDEN_I64, WIDEN_I64},   {WIDEN_F32, WIDEN_F16},   {WIDEN_F32, WIDEN_BF16},
    {WIDEN_F16, WIDEN_F32},   {WIDEN_BF16, WIDEN_F32},  {WIDEN_F16, WIDEN_BF16},  {WIDEN_BF16, WIDEN_F16},
};

enum { GUARD = 64 };

static int run_case(widen_isa isa, int index, int verbose)
{
    static const size_t rows_opts[] = {0, 1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257, 1000, 4099};
    static const size_t chan_opts[] = {1, 2, 3, 4, 5, 8, 9, 13, 16};
    static const size_t inner_opts[] = {1, 1, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 196, 1031};
    pair pr = pairs[next() % (sizeof pairs / sizeof pairs[0])];
    size_t rows = pick(rows_opts, sizeof rows_opts / sizeof rows_opts[0]);
    size_t c = pick(chan_opts, sizeof chan_opts / sizeof chan_opts[0]);
    size_t n = pick(chan_opts, sizeof chan_opts / sizeof chan_opts[0]);
    size_t inner = pick(inner_opts, sizeof inner_opts / sizeof inner_opts[0]);
    if (rows * inner > 300000) rows = 300000 / inner;
    if (next() % 3 == 0) { /* the short-row shapes: RGB <-> RGBA, reorders */
        inner = 1 + next() % 2;
        c = 3 + next() % 2;
        n = 3 + next() % 2;
        rows = 1000 + next() % 3000;
    }
    int computable = widen_dtype_bits(pr.dst) != 8 && pr.dst != WIDEN_I16 && pr.dst != WIDEN_I64;
    widen_map_entry *map = calloc(n, sizeof *map);
    int arithmetic = computable && widen_dtype_bits(pr.src) != 8 && pr.src != WIDEN_I16 && pr.src != WIDEN_I64;
    for (size_t k = 0; k < n; k++) {
        unsigned roll = (unsigned)(next() % 14);
        float v = consts[next() % (sizeof consts / sizeof consts[0])];
        if (roll < 7) map[k] = (widen_map_entry){.kind = WIDEN_MAP_SOURCE, .channel = (uint32_t)(next() % c)};
        else if (roll < 8 || !computable) map[k] = (widen_map_entry){.kind = WIDEN_MAP_ZERO};
        else if (roll < 9 || !arithmetic) map[k] = (widen_map_entry){.kind = WIDEN_MAP_CONST, .value = v};
        else if (roll < 10) map[k] = (widen_map_entry){.kind = WIDEN_MAP_SCALE, .channel = (uint32_t)(next() % c), .value = v};
        else if (roll < 11) map[k] = (widen_map_entry){.kind = WIDEN_MAP_MEAN};
        else if (roll < 12) map[k] = (widen_map_entry){.kind = WIDEN_MAP_SUM};
        else map[k] = (widen_map_entry){.kind = WIDEN_MAP_NORMAL, .value = 0.02f + (float)(next() % 100), .seed = next()};
    }
    if (next() % 4 == 0) /* the identity and the plain widening, the common cases */
        for (size_t k = 0; k < n; k++)
            map[k] = k < c ? (widen_map_entry){.kind = WIDEN_MAP_SOURCE, .channel = (uint32_t)k}
                           : (widen_map_entry){.kind = WIDEN_MAP_ZERO};
    size_t ss = widen_dtype_bits(pr.src) / 8, ds = widen_dtype_bits(pr.dst) / 8;
    /* a view as strides allow it, one case in four: rows that overlap (the last channel of a row is
     * the first of the next), or channels far apart (a row's map reads past the vector a short-row
     * kernel loads) */
    size_t row_stride = c * inner, chan_stride = inner;
    if (next() % 4 == 0) {
        if (next() % 2 && c > 1) row_stride = (c - 1) * inner;
        else chan_stride = inner * (1 + next() % 8);
    }
    size_t in_elems = rows ? (rows - 1) * row_stride + (c - 1) * chan_stride + inner : 0;
    size_t in_bytes = in_elems * ss, out_bytes = rows * n * inner * ds;
    size_t src_off = next() % 64, dst_off = next() % 64;
    unsigned char *src = malloc(in_bytes + 64), *want = malloc(out_bytes + 2 * GUARD + 64),
                  *got = malloc(out_bytes + 2 * GUARD + 64);
    random_elements(src + src_off, in_elems, pr.src);
    for (size_t i = 0; i < out_bytes + 2 * GUARD + 64; i++) want[i] = got[i] = (unsigned char)next();
    widen_remap_job job = {.src = src + src_off, .src_dtype = pr.src, .dst_dtype = pr.dst, .rows = rows,
                           .channels = n, .inner = inner, .src_row_stride = row_stride, .src_chan_stride = chan_stride,
                           .dst_row_stride = n * inner, .dst_chan_stride = inner, .map = map,
                           .store = (widen_store)(next() % 3), .src_channels = c, .index = next() % 100000};
    widen_error err;
    job.dst = want + GUARD + dst_off;
    int ok = widen_remap(&job, WIDEN_ISA_SCALAR, &err) == WIDEN_OK;
    job.dst = got + GUARD + dst_off;
    ok = ok && widen_remap(&job, isa, &err) == WIDEN_OK;
    ok = ok && memcmp(want, got, out_bytes + 2 * GUARD + 64) == 0;
    if (!ok && verbose) {
        size_t at = 0;
        while (at < out_bytes + 2 * GUARD + 64 && want[at] == got[at]) at++;
        fprintf(stderr, "case %d (%s): %s -> %s rows=%zu c=%zu n=%zu inner=%zu strides %zu,%zu src+%zu dst+%zu "
                "store=%d: first difference at output byte %lld\n", index, widen_isa_name(isa),
                widen_dtype_name(pr.src), widen_dtype_name(pr.dst), rows, c, n, inner, row_stride, chan_stride,
                src_off, dst_off, (int)job.store,
                (long long)at - GUARD - (long long)dst_off);
    }
    free(map);
    free(src);
    free(want);
    free(got);
    return ok;
}

/* XXH3-128 through the ISA's hash kernels against the scalar one, fed in random pieces. */
static int hash_case(widen_isa isa, int index, int verbose)
{
    const widen_kernels *ref = widen_kernels_for(WIDEN_ISA_SCALAR), *k = widen_kernels_for(isa);
    size_t len = index < 300 ? (size_t)index : (size_t)(next() % 200000);
    unsigned char *data = malloc(len + 1);
    for (size_t i = 0; i < len; i++) data[i] = (unsigned char)next();
    static widen_hash_state a, b;
    ref->hash_reset(&a);
    ref->hash_update(&a, data, len);
    k->hash_reset(&b);
    for (size_t at = 0; at < len;) {
        size_t piece = 1 + next() % (next() % 2 ? 64 : 70000);
        if (piece > len - at) piece = len - at;
        k->hash_update(&b, data + at, piece);
        at += piece;
    }
    widen_hash128 want = ref->hash_digest(&a), got = k->hash_digest(&b);
    free(data);
    int ok = want.high == got.high && want.low == got.low;
    if (!ok && verbose) fprintf(stderr, "hash case %d (%s): %zu bytes differ from scalar\n", index, widen_isa_name(isa), len);
    return ok;
}

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "all";
    int cases = argc > 2 ? atoi(argv[2]) : 3000;
    int passed = 0, failed = 0, ran_isa = 0;
    for (int i = 0; i < WIDEN_ISA_COUNT; i++) {
        widen_isa isa = (widen_isa)i;
        if (strcmp(which, "all") != 0 && strcmp(which, widen_isa_name(isa)) != 0) continue;
        if (strcmp(which, "all") == 0 && isa == WIDEN_ISA_SCALAR) continue; /* the reference itself */
        if (!widen_isa_usable(isa)) {
            if (strcmp(which, "all") != 0) {
                fprintf(stderr, "conformance: %s is not usable here (cpu: %s)\n", which, widen_cpu_features());
                return 2;
            }
            continue;
        }
        ran_isa++;
        rng_state = 0x9e3779b97f4a7c15ull; /* the same cases for every ISA */
        int isa_failed = 0;
        for (int k = 0; k < cases; k++) {
            if (run_case(isa, k, isa_failed < 5)) passed++;
            else failed++, isa_failed++;
        }
        for (int k = 0; k < cases / 4; k++) {
            if (hash_case(isa, k, isa_failed < 5)) passed++;
            else failed++, isa_failed++;
        }
        printf("%s: %d remap and %d hash cases, %d failed\n", widen_isa_name(isa), cases, cases / 4, isa_failed);
    }
    if (!ran_isa) {
        fprintf(stderr, "conformance: no ISA named %s\n", which);
        return 2;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
