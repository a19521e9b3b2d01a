/* widen_bench.c: widen-bench, the kernel microbenchmark: one shape (or the README's suite) padded by
 * every ISA's kernel beside memcpy of the same output and the peers, on Google Benchmark's runner. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <pthreadpool.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <xnnpack.h>

#include "gbench_shim.h"
#include "widen/widen.h"

/* Limits, checked where the options are read. */
#define WB_MAX_THREADS 1024
#define WB_MAX_CASES 32
#define WB_MAX_CHANNELS 65536
#define WB_MAX_BYTES ((uint64_t)1 << 38) /* input or output of one case: 256 GiB */
#define WB_NAME_SIZE 512
/* The ratio to memcpy SPEC §6 asks of an AVX2/AVX-512 kernel (the README's table marks those below). */
#define WB_TARGET 0.95

/* The defaults put before the user's flags: Google Benchmark keeps the last value of a flag, so the
 * user's own --benchmark_* flags override these. */
static const char *const default_flags[] = {"--benchmark_repetitions=5", "--benchmark_enable_random_interleaving=true",
                                            "--benchmark_min_time=0.1"};
#define N_DEFAULT_FLAGS (sizeof default_flags / sizeof *default_flags)

static const char usage[] =
    "usage: widen-bench --shape D0,D1,... [--axis A] [--to N [--at P] [--init MODE] | --map LIST]\n"
    "                   [--dtype DTYPE] [--cast f32|f16|bf16] [--isa LIST|all] [--store LIST|all]\n"
    "                   [--threads N] [--json | --markdown] [--check] [--dump PREFIX] [--benchmark_* ...]\n"
    "       widen-bench --suite [--markdown | --json] [options]\n"
    "       widen-bench --version | --help\n"
    "\n"
    "Measures how fast widen's kernels widen (or cast) a tensor of the given shape on this machine: each\n"
    "usable ISA's kernel beside memcpy of the same output, measured in the same run, and the peers that\n"
    "can do the same job: a naive per-row memcpy/memset loop and XNNPACK's constant pad. Before timing,\n"
    "every contender's output is checked against the scalar kernel's (XXH3-128 of the output bytes).\n"
    "\n"
    "case:\n"
    "  --shape D0,D1,...    the input tensor's shape (a dimension may end in K or M: 1024s, 1048576s)\n"
    "  --axis A             the channel axis (default 1; negative counts from the end)\n"
    "  --to N               widen the axis to N channels: the old ones at P..P+C-1 (--at, default 0), the\n"
    "                       new ones filled by --init (zeros, const:V, mean, copy:K, normal:STD[:SEED],\n"
    "                       timm, cyclic; default zeros), as `widen apply --to` does\n"
    "  --map LIST           one entry per output channel, `widen apply --map` syntax (K, K*S, zero,\n"
    "                       const:V, mean, sum, normal:STD[:SEED])\n"
    "                       (neither --to nor --map: the tensor is copied, or cast with --cast)\n"
    "  --dtype DTYPE        the input's element type (default f32): f32, f16, bf16, u8, i64, ...\n"
    "  --cast f32|f16|bf16  the output's element type (default: the input's)\n"
    "  --suite              the README's standard cases instead: axis 1 of [64,3,512,512] and\n"
    "                       [20480,3,14,14], and the last axis of [16M,3], to 4 channels, in F32, F16\n"
    "                       and BF16; and casts of 64M elements between F32, F16 and BF16\n"
    "\n"
    "contenders:\n"
    "  --isa LIST|all       widen's kernels to measure, comma-separated: scalar, avx2, avx512, neon\n"
    "                       (default and all: every ISA this CPU runs; naming one it cannot is an error)\n"
    "  --store LIST|all     store modes: auto (what widen picks for this output size), cached, stream\n"
    "                       (default cached,stream; scalar has one mode and is measured cached)\n"
    "  --threads N          split the rows (or, with fewer rows, the elements) over N threads, for\n"
    "                       widen, memcpy, the naive loop and XNNPACK alike (default 1)\n"
    "\n"
    "output (standard output):\n"
    "  (default)            a table per case: output GB/s, bytes moved (read + written) GB/s, the ratio\n"
    "                       of bytes moved to memcpy's, and the coefficient of variation of the\n"
    "                       repetitions; medians of the repetitions\n"
    "  --json               the same as one compact JSON document\n"
    "  --markdown           the README's kernel table: ratios to memcpy, AVX2/AVX-512 figures below\n"
    "                       0.95 in bold, and the cases where no store mode reaches 0.95\n"
    "  --check              no timing: run every contender once, check its output against the scalar\n"
    "                       kernel's, print one line each; exit 1 if any differs\n"
    "  --dump PREFIX        no timing: write the input to PREFIX.in and the scalar kernel's output to\n"
    "                       PREFIX.out (raw little-endian elements, row-major), then --check\n"
    "\n"
    "Google Benchmark's flags pass through, after these defaults (yours win):\n"
    "  --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true --benchmark_min_time=0.1\n"
    "With --benchmark_format=console|json|csv, standard output is Google Benchmark's own report (for its\n"
    "compare.py and dashboards) and the table goes to standard error; --benchmark_out=FILE\n"
    "(--benchmark_out_format=json|console|csv) writes its report to FILE as well. Its names are\n"
    "CONTENDER/CASE (memcpy, naive, xnnpack, widen_ISA_STORE), timed on the wall clock (/real_time).\n"
    "Also: --benchmark_filter=REGEX, --benchmark_list_tests, --benchmark_report_aggregates_only, ...\n"
    "\n"
    "exit status: 0 ok, 1 a contender's output differs from the scalar kernel's, 2 usage error,\n"
    "4 out of memory, or a --dump file that cannot be written\n";

static int fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line on stderr; the status is the exit code (SPEC §2). */
static int fail(int status, const char *fmt, ...)
{
    char line[2048], shown[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    widen_escape_text(line, shown, sizeof shown);
    fprintf(stderr, "widen-bench: error: %s\n", shown);
    return status;
}

/* ---------------------------------------------------------------------------------------------- */
/* Cases                                                                                            */

typedef struct bench_case {
    char name[WB_NAME_SIZE];
    widen_dtype in_dtype, out_dtype;
    size_t in_size, out_size;         /* bytes per element */
    size_t rows, c, n, inner;         /* [rows, c, inner] -> [rows, n, inner] */
    widen_map_entry *map;             /* n entries */
    size_t in_bytes, out_bytes;
    widen_hash128 expected;           /* XXH3-128 of the scalar kernel's output */
    int naive;                        /* the naive loop can do it: no cast, copies and zero fills only */
    int xnnpack;                      /* XNNPACK's constant pad can: no cast, one run of channels 0..c-1 */
    size_t pad_before, pad_after;     /* (XNNPACK) new channels before and after the old ones */
    uint32_t pad_bits;                /* (XNNPACK) the fill's bits */
} bench_case;

enum contender_kind { MEMCPY, NAIVE, XNNPACK, WIDEN };

typedef struct contender {
    const bench_case *bc;
    enum contender_kind kind;
    widen_isa isa;
    widen_store store; /* resolved: AUTO becomes what widen picks for the whole output */
    const char *store_name;
    char label[32];    /* memcpy, naive, xnnpack, avx2_stream: the column and the first part of the name */
} contender;

static size_t elem_size(widen_dtype d) { return widen_dtype_bits(d) / 8; }

/* A dimension: digits, optionally K (x1024) or M (x1048576). */
static int parse_dim(const char *text, size_t len, uint64_t *out)
{
    uint64_t v = 0, mul = 1;
    if (len && (text[len - 1] == 'K' || text[len - 1] == 'M')) mul = text[--len] == 'K' ? 1024 : 1048576;
    if (!len) return -1;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9' || v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(text[i] - '0');
    }
    if (v && mul > UINT64_MAX / v) return -1;
    *out = v * mul;
    return 0;
}

static int parse_shape(const char *text, uint64_t *shape, int *rank)
{
    *rank = 0;
    for (const char *p = text;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (*rank == WIDEN_MAX_RANK)
            return fail(WIDEN_EUSAGE, "--shape: '%s' has more than %d dimensions", text, WIDEN_MAX_RANK);
        if (parse_dim(p, len, &shape[*rank]) || shape[*rank] == 0)
            return fail(WIDEN_EUSAGE, "--shape: '%s' is not positive integers separated by commas", text);
        ++*rank;
        if (!comma) return 0;
        p = comma + 1;
    }
}

static int parse_uint(const char *text, const char *flag, unsigned long long min, unsigned long long max,
                      unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = (*text >= '0' && *text <= '9') ? strtoull(text, &end, 10) : 0;
    if (*text < '0' || *text > '9' || *end || errno || v < min || v > max)
        return fail(WIDEN_EUSAGE, "%s: '%s' is not an integer from %llu to %llu", flag, text, min, max);
    *out = v;
    return 0;
}

/* "f32", "BF16", "u8": the safetensors names, any case. */
static int parse_dtype(const char *text, widen_dtype *out)
{
    char upper[32];
    size_t len = strlen(text);
    if (len >= sizeof upper) return -1;
    for (size_t i = 0; i <= len; i++)
        upper[i] = (char)(text[i] >= 'a' && text[i] <= 'z' ? text[i] - 'a' + 'A' : text[i]);
    return widen_dtype_from_name(upper, out);
}

/* "16M" for 16777216: the suite's names as the README has always spelled them. */
static void dim_name(uint64_t d, char *out, size_t size)
{
    if (d >= 1048576 && d % 1048576 == 0) snprintf(out, size, "%lluM", (unsigned long long)(d / 1048576));
    else snprintf(out, size, "%llu", (unsigned long long)d);
}

typedef struct case_spec {
    const char *shape, *map, *to, *at, *init, *dtype, *cast;
    long axis;
    int axis_given;
} case_spec;

/* The fill's bits in dtype `d`, where every new channel holds the same fill XNNPACK can write. */
static int fill_bits(const widen_map_entry *e, widen_dtype d, uint32_t *bits)
{
    if (e->kind == WIDEN_MAP_ZERO) return *bits = 0, 0;
    if (e->kind != WIDEN_MAP_CONST || !widen_dtype_is_computable(d)) return -1;
    uint32_t out = 0;
    if (widen_cast(WIDEN_F32, d, &e->value, &out, 1, WIDEN_ISA_SCALAR, NULL)) return -1;
    *bits = out;
    return 0;
}

static void classify_peers(bench_case *bc)
{
    bc->naive = bc->in_dtype == bc->out_dtype;
    for (size_t k = 0; k < bc->n; k++)
        if (bc->map[k].kind != WIDEN_MAP_SOURCE && bc->map[k].kind != WIDEN_MAP_ZERO) bc->naive = 0;
    /* XNNPACK: fills, channels 0..c-1 in order, fills; all fills the same; 1, 2 or 4-byte elements */
    bc->xnnpack = 0;
    if (bc->in_dtype != bc->out_dtype || (bc->in_size != 1 && bc->in_size != 2 && bc->in_size != 4) || bc->n <= bc->c)
        return;
    size_t first = bc->n;
    for (size_t k = 0; k < bc->n; k++)
        if (bc->map[k].kind == WIDEN_MAP_SOURCE) {
            first = k;
            break;
        }
    if (first == bc->n || first + bc->c > bc->n) return;
    for (size_t k = 0; k < bc->c; k++)
        if (bc->map[first + k].kind != WIDEN_MAP_SOURCE || bc->map[first + k].channel != k) return;
    const widen_map_entry *fill = first ? &bc->map[0] : &bc->map[first + bc->c];
    uint32_t bits;
    if (fill_bits(fill, bc->in_dtype, &bits)) return;
    for (size_t k = 0; k < bc->n; k++) {
        if (k >= first && k < first + bc->c) continue;
        if (bc->map[k].kind != fill->kind || memcmp(&bc->map[k].value, &fill->value, sizeof fill->value)) return;
    }
    bc->xnnpack = 1;
    bc->pad_before = first;
    bc->pad_after = bc->n - first - bc->c;
    bc->pad_bits = bits;
}

static int build_case(const case_spec *s, unsigned threads, bench_case *bc)
{
    widen_error err;
    uint64_t shape[WIDEN_MAX_RANK];
    int rank;
    memset(bc, 0, sizeof *bc);
    if (parse_shape(s->shape, shape, &rank)) return WIDEN_EUSAGE;
    int whole = !s->map && !s->to && !s->at && !s->init; /* a copy or a cast: one run of every element */
    long axis = s->axis < 0 ? s->axis + rank : s->axis; /* checked where given, though a whole copy ignores it */
    if (whole && !s->axis_given) axis = 0;
    if (axis < 0 || axis >= rank) return fail(WIDEN_EUSAGE, "--axis: a tensor of rank %d has no axis %ld", rank, s->axis);
    if (parse_dtype(s->dtype, &bc->in_dtype) || widen_dtype_bits(bc->in_dtype) % 8)
        return fail(WIDEN_EUSAGE, "--dtype: '%s' is not a dtype of whole bytes (f32, f16, bf16, u8, i64, ...)", s->dtype);
    bc->out_dtype = bc->in_dtype;
    if (s->cast) {
        if (parse_dtype(s->cast, &bc->out_dtype) || !widen_dtype_is_computable(bc->out_dtype))
            return fail(WIDEN_EUSAGE, "--cast: '%s' is not f32, f16 or bf16", s->cast);
        if (!widen_dtype_is_computable(bc->in_dtype))
            return fail(WIDEN_EUSAGE, "--cast: a %s input cannot be cast (f32, f16 and bf16 can)",
                        widen_dtype_name(bc->in_dtype));
    }
    bc->in_size = elem_size(bc->in_dtype);
    bc->out_size = elem_size(bc->out_dtype);
    uint64_t rows = 1, inner = 1, c = shape[axis];
    for (int i = 0; i < rank; i++) {
        uint64_t *p = i < axis ? &rows : i > axis ? &inner : NULL;
        if (p && __builtin_mul_overflow(*p, shape[i], p)) return fail(WIDEN_EUSAGE, "--shape: '%s' is too large", s->shape);
    }
    if (whole) inner = rows * c * inner, rows = 1, c = 1;
    if (c > WB_MAX_CHANNELS) return fail(WIDEN_EUSAGE, "--shape: axis %ld has more than %d channels", axis, WB_MAX_CHANNELS);

    if (s->map) {
        if (widen_parse_map(s->map, &bc->map, &bc->n, &err)) return fail(WIDEN_EUSAGE, "--map: %s", err.message);
        for (size_t k = 0; k < bc->n; k++)
            if ((bc->map[k].kind == WIDEN_MAP_SOURCE || bc->map[k].kind == WIDEN_MAP_SCALE) && bc->map[k].channel >= c)
                return fail(WIDEN_EUSAGE, "--map: entry %zu reads channel %u of %llu", k, bc->map[k].channel,
                            (unsigned long long)c);
    } else {
        unsigned long long n = c, at = 0;
        if (s->to && parse_uint(s->to, "--to", 1, WB_MAX_CHANNELS, &n)) return WIDEN_EUSAGE;
        if (s->at && parse_uint(s->at, "--at", 0, WB_MAX_CHANNELS, &at)) return WIDEN_EUSAGE;
        widen_init init = {WIDEN_INIT_FILL, {WIDEN_MAP_ZERO, 0, 0, 0}};
        if (s->init && widen_parse_init(s->init, &init, &err)) return fail(WIDEN_EUSAGE, "--init: %s", err.message);
        bc->n = (size_t)n;
        bc->map = calloc(bc->n, sizeof *bc->map);
        if (!bc->map) return fail(WIDEN_EIO, "out of memory");
        if (widen_widen_map((uint32_t)c, (uint32_t)n, (uint32_t)at, &init, bc->map, &err))
            return fail(WIDEN_EUSAGE, "--to: %s", err.message);
    }
    for (size_t k = 0; k < bc->n; k++)
        if (bc->map[k].kind >= WIDEN_MAP_CONST && !widen_dtype_is_computable(bc->in_dtype))
            return fail(WIDEN_EUSAGE, "--map: entry %zu computes, which a %s tensor cannot (f32, f16 and bf16 can)", k,
                        widen_dtype_name(bc->in_dtype));
    bc->rows = (size_t)rows, bc->c = (size_t)c, bc->inner = (size_t)inner;
    uint64_t in_bytes, out_bytes;
    if (__builtin_mul_overflow(rows * c, inner, &in_bytes) || __builtin_mul_overflow(in_bytes, bc->in_size, &in_bytes) ||
        __builtin_mul_overflow(rows, (uint64_t)bc->n, &out_bytes) || __builtin_mul_overflow(out_bytes, inner, &out_bytes) ||
        __builtin_mul_overflow(out_bytes, bc->out_size, &out_bytes) || in_bytes > WB_MAX_BYTES || out_bytes > WB_MAX_BYTES)
        return fail(WIDEN_EUSAGE, "--shape: '%s' is too large (input and output are limited to %llu GiB)", s->shape,
                    (unsigned long long)(WB_MAX_BYTES >> 30));
    bc->in_bytes = (size_t)in_bytes, bc->out_bytes = (size_t)out_bytes;
    classify_peers(bc);

    /* The name: the shape, what is done along which axis, the dtypes, the threads. */
    char *p = bc->name, *end = bc->name + sizeof bc->name;
    for (int i = 0; i < rank; i++) {
        char d[32];
        dim_name(shape[i], d, sizeof d);
        p += snprintf(p, (size_t)(end - p), "%s%s", i ? "x" : "", d);
    }
    if (s->map) p += snprintf(p, (size_t)(end - p), "_axis%ld_map:%s", axis, s->map);
    else if (s->to || s->at || s->init)
        p += snprintf(p, (size_t)(end - p), "_axis%ld_to%zu%s%s%s%s", axis, bc->n, s->at ? "_at" : "", s->at ? s->at : "",
                      s->init ? "_" : "", s->init ? s->init : "");
    if (p < end) p += snprintf(p, (size_t)(end - p), "/%s", widen_dtype_name(bc->in_dtype));
    if (p < end && bc->out_dtype != bc->in_dtype) p += snprintf(p, (size_t)(end - p), "_to_%s", widen_dtype_name(bc->out_dtype));
    if (p < end && threads > 1) snprintf(p, (size_t)(end - p), "/threads:%u", threads);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Buffers                                                                                          */

/* The output starts a few cache lines off the input's page offset, as unrelated buffers do, so that
 * loads and stores do not alias in the 4 KiB store-forwarding check when both sides advance together. */
#define WB_DST_OFFSET (5 * 64)
#define WB_PATTERN_BYTES 65536

/* The input: a 64 KiB block of finite values in [-2, 2) (random bytes for dtypes widen does not
 * compute on) repeated over the whole buffer: as fast to lay down as a memcpy, no NaNs or infinities. */
static void fill_input(unsigned char *buf, size_t bytes, widen_dtype dtype)
{
    static unsigned char pattern[WB_PATTERN_BYTES];
    static float values[WB_PATTERN_BYTES / 2];
    uint32_t x = 12345;
    for (size_t i = 0; i < WB_PATTERN_BYTES; i++) pattern[i] = (unsigned char)((x = x * 1103515245u + 12345u) >> 16);
    if (widen_dtype_is_computable(dtype)) {
        size_t count = WB_PATTERN_BYTES / elem_size(dtype);
        for (size_t i = 0; i < count; i++) values[i] = (float)((x = x * 1103515245u + 12345u) >> 8) / 4194304.0f - 2.0f;
        widen_cast(WIDEN_F32, dtype, values, pattern, count, WIDEN_ISA_SCALAR, NULL);
    } else if (dtype == WIDEN_BOOL) {
        for (size_t i = 0; i < WB_PATTERN_BYTES; i++) pattern[i] &= 1;
    }
    for (size_t at = 0; at < bytes; at += WB_PATTERN_BYTES)
        memcpy(buf + at, pattern, bytes - at < WB_PATTERN_BYTES ? bytes - at : WB_PATTERN_BYTES);
}

/* One input and one output buffer for the whole run, as large as the largest case needs, allocated
 * and touched once: a benchmark's setup is then only refilling the input when the case changes, and
 * no run pays for page faults or sees pages another run did not. */
static struct {
    unsigned char *src, *dst_base, *dst;
    size_t src_bytes, dst_bytes;
    widen_dtype filled_dtype;
    size_t filled_bytes; /* the input's first filled_bytes hold filled_dtype's pattern */
} arena;

static int arena_reserve(size_t src_bytes, size_t dst_bytes)
{
    arena.src = aligned_alloc(64, (src_bytes + 63) / 64 * 64 + 64);
    arena.dst_base = aligned_alloc(64, (dst_bytes + WB_DST_OFFSET + 63) / 64 * 64);
    if (!arena.src || !arena.dst_base) return -1;
    arena.src_bytes = src_bytes, arena.dst_bytes = dst_bytes;
    arena.dst = arena.dst_base + WB_DST_OFFSET;
    memset(arena.src, 0, src_bytes);
    memset(arena.dst, 0, dst_bytes);
    arena.filled_bytes = 0;
    return 0;
}

static void arena_free(void)
{
    free(arena.src);
    free(arena.dst_base);
}

typedef struct buffers {
    unsigned char *src, *dst;
} buffers;

/* The buffers of a case: src_bytes of input in the case's dtype; with `poison`, an output of bytes no
 * kernel writes here (0xa5), so that a check never passes on what an earlier run left. */
static void buffers_get(buffers *b, const bench_case *bc, size_t src_bytes, int poison)
{
    if (arena.filled_dtype != bc->in_dtype || arena.filled_bytes < src_bytes) {
        fill_input(arena.src, src_bytes, bc->in_dtype);
        arena.filled_dtype = bc->in_dtype, arena.filled_bytes = src_bytes;
    }
    b->src = arena.src, b->dst = arena.dst;
    if (poison) memset(b->dst, 0xa5, bc->out_bytes);
}

/* ---------------------------------------------------------------------------------------------- */
/* Threads: one pool for the process; every contender's work is split the same way                 */

typedef void (*work_fn)(void *arg, unsigned index, unsigned count);

static struct {
    unsigned threads;
    pthread_t ids[WB_MAX_THREADS];
    pthread_barrier_t start, done;
    work_fn fn;
    void *arg;
    int stop;
    pthreadpool_t xnn_pool; /* XNNPACK's own pool of as many threads (NULL: one thread) */
} pool;

static void *pool_worker(void *p)
{
    unsigned index = (unsigned)(uintptr_t)p;
    for (;;) {
        pthread_barrier_wait(&pool.start);
        if (pool.stop) return NULL;
        pool.fn(pool.arg, index, pool.threads);
        pthread_barrier_wait(&pool.done);
    }
}

static int pool_start(unsigned threads)
{
    pool.threads = threads;
    if (threads == 1) return 0;
    pthread_barrier_init(&pool.start, NULL, threads);
    pthread_barrier_init(&pool.done, NULL, threads);
    for (unsigned i = 1; i < threads; i++)
        if (pthread_create(&pool.ids[i], NULL, pool_worker, (void *)(uintptr_t)i)) return -1;
    pool.xnn_pool = pthreadpool_create(threads);
    return 0;
}

static void pool_stop(void)
{
    if (pool.threads <= 1) return;
    pool.stop = 1;
    pthread_barrier_wait(&pool.start);
    for (unsigned i = 1; i < pool.threads; i++) pthread_join(pool.ids[i], NULL);
    pthread_barrier_destroy(&pool.start);
    pthread_barrier_destroy(&pool.done);
    if (pool.xnn_pool) pthreadpool_destroy(pool.xnn_pool);
}

static void pool_run(work_fn fn, void *arg)
{
    if (pool.threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool.fn = fn, pool.arg = arg;
    pthread_barrier_wait(&pool.start);
    fn(arg, 0, pool.threads);
    pthread_barrier_wait(&pool.done);
}

/* Thread `index` of `count`'s part of a case: its rows, or where there are fewer rows than threads,
 * every row's share of the inner elements. */
typedef struct slice {
    size_t r0, r1, i0, i1;
} slice;

static slice slice_of(const bench_case *bc, unsigned index, unsigned count)
{
    slice s = {0, bc->rows, 0, bc->inner};
    if (bc->rows >= count) s.r0 = bc->rows * index / count, s.r1 = bc->rows * (index + 1) / count;
    else s.i0 = bc->inner * index / count, s.i1 = bc->inner * (index + 1) / count;
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* Contenders                                                                                       */

typedef struct state {
    const contender *ct;
    buffers b;
    xnn_operator_t op;
} state;

static void remap_slice(const bench_case *bc, slice s, const void *src, void *dst, widen_isa isa, widen_store store)
{
    if (s.r0 >= s.r1 || s.i0 >= s.i1) return;
    size_t first_in = s.r0 * bc->c * bc->inner + s.i0, first_out = s.r0 * bc->n * bc->inner + s.i0;
    widen_remap_job job = {(const unsigned char *)src + first_in * bc->in_size, (unsigned char *)dst + first_out * bc->out_size,
                           bc->in_dtype, bc->out_dtype, s.r1 - s.r0, bc->n, s.i1 - s.i0, bc->c * bc->inner, bc->inner,
                           bc->n * bc->inner, bc->inner, bc->map, store, bc->c, first_out};
    widen_remap(&job, isa, NULL); /* the job was run once before timing (the reference); it cannot fail here */
}

static void work(void *arg, unsigned index, unsigned count)
{
    state *st = arg;
    const contender *ct = st->ct;
    const bench_case *bc = ct->bc;
    if (ct->kind == MEMCPY) {
        size_t lines = (bc->out_bytes + 63) / 64, a = lines * index / count * 64, z = lines * (index + 1) / count * 64;
        if (z > bc->out_bytes) z = bc->out_bytes;
        if (a < z) memcpy(st->b.dst + a, st->b.src + a, z - a);
        return;
    }
    slice s = slice_of(bc, index, count);
    if (ct->kind == WIDEN) {
        remap_slice(bc, s, st->b.src, st->b.dst, ct->isa, ct->store);
        return;
    }
    /* NAIVE: a memcpy per copied channel run, a memset per zero one */
    size_t sz = bc->in_size, run = (s.i1 - s.i0) * sz;
    if (s.i0 >= s.i1) return;
    for (size_t r = s.r0; r < s.r1; r++) {
        unsigned char *out = st->b.dst + ((r * bc->n) * bc->inner + s.i0) * sz;
        const unsigned char *in = st->b.src + ((r * bc->c) * bc->inner + s.i0) * sz;
        for (size_t k = 0; k < bc->n; k++, out += bc->inner * sz) {
            if (bc->map[k].kind == WIDEN_MAP_SOURCE) memcpy(out, in + bc->map[k].channel * bc->inner * sz, run);
            else memset(out, 0, run);
        }
    }
}

static void *contender_prepare(void *arg, int first)
{
    const contender *ct = arg;
    const bench_case *bc = ct->bc;
    state *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->ct = ct;
    buffers_get(&st->b, bc, ct->kind == MEMCPY ? bc->out_bytes : bc->in_bytes, first);
    if (ct->kind == XNNPACK) {
        size_t shape[3] = {bc->rows, bc->c, bc->inner}, pre[3] = {0, bc->pad_before, 0}, post[3] = {0, bc->pad_after, 0};
        uint32_t bits32 = bc->pad_bits;
        uint16_t bits16 = (uint16_t)bc->pad_bits;
        uint8_t bits8 = (uint8_t)bc->pad_bits;
        enum xnn_status s;
        if (bc->in_size == 4) {
            s = xnn_create_constant_pad_nd_x32(&bits32, 0, &st->op);
            if (s == xnn_status_success)
                s = xnn_setup_constant_pad_nd_x32(st->op, 3, shape, pre, post, st->b.src, st->b.dst, pool.xnn_pool);
        } else if (bc->in_size == 2) {
            s = xnn_create_constant_pad_nd_x16(&bits16, 0, &st->op);
            if (s == xnn_status_success)
                s = xnn_setup_constant_pad_nd_x16(st->op, 3, shape, pre, post, st->b.src, st->b.dst, pool.xnn_pool);
        } else {
            s = xnn_create_constant_pad_nd_x8(&bits8, 0, &st->op);
            if (s == xnn_status_success)
                s = xnn_setup_constant_pad_nd_x8(st->op, 3, shape, pre, post, st->b.src, st->b.dst, pool.xnn_pool);
        }
        if (s != xnn_status_success) {
            if (st->op) xnn_delete_operator(st->op);
            return free(st), NULL;
        }
    }
    return st;
}

static void contender_run(void *arg)
{
    state *st = arg;
    if (st->ct->kind == XNNPACK) xnn_run_operator(st->op, pool.xnn_pool);
    else pool_run(work, st);
}

static int contender_check(void *arg, char *error, size_t size)
{
    state *st = arg;
    const bench_case *bc = st->ct->bc;
    widen_hash128 h = widen_hash_bytes(st->b.dst, bc->out_bytes);
    if (h.high == bc->expected.high && h.low == bc->expected.low) return 0;
    char want[33], got[33];
    widen_hash128_hex(bc->expected, want);
    widen_hash128_hex(h, got);
    snprintf(error, size, "%s on %s: output differs from the scalar kernel's (XXH3-128 %s, not %s)", st->ct->label,
             bc->name, got, want);
    return 1;
}

static void contender_release(void *arg)
{
    state *st = arg;
    if (st->op) xnn_delete_operator(st->op);
    free(st);
}

/* The scalar kernel's output, one job on one thread: the reference every contender is checked
 * against. Writes the input and the output to PREFIX.in / PREFIX.out where dump is set. */
static int reference(bench_case *bc, const char *dump)
{
    buffers b;
    widen_error err;
    buffers_get(&b, bc, bc->in_bytes, 1);
    widen_remap_job job = {b.src, b.dst, bc->in_dtype, bc->out_dtype, bc->rows, bc->n, bc->inner, bc->c * bc->inner,
                           bc->inner, bc->n * bc->inner, bc->inner, bc->map, WIDEN_STORE_CACHED, bc->c, 0};
    int rc = 0;
    if (widen_remap(&job, WIDEN_ISA_SCALAR, &err)) rc = fail(WIDEN_EUSAGE, "%s: %s", bc->name, err.message);
    else bc->expected = widen_hash_bytes(b.dst, bc->out_bytes);
    for (int i = 0; !rc && dump && i < 2; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%s", dump, i ? "out" : "in");
        FILE *f = fopen(path, "wb");
        size_t bytes = i ? bc->out_bytes : bc->in_bytes;
        int ok = f && fwrite(i ? b.dst : b.src, 1, bytes, f) == bytes;
        if (f && fclose(f)) ok = 0;
        if (!ok) rc = fail(WIDEN_EIO, "%s: %s", path, strerror(errno));
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Results                                                                                          */

typedef struct result {
    double median, cv; /* bytes moved per second; stddev / mean */
    size_t repetitions;
    int have;
} result;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static result summarize(const wb_benchmark *b)
{
    result r = {0, 0, b->repetitions, 0};
    if (b->failed) return r;
    if (b->repetitions) {
        double v[WB_MAX_REPETITIONS], sum = 0, sq = 0;
        size_t n = b->repetitions;
        memcpy(v, b->rates, n * sizeof *v);
        qsort(v, n, sizeof *v, cmp_double);
        r.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
        for (size_t i = 0; i < n; i++) sum += v[i];
        double mean = sum / (double)n;
        for (size_t i = 0; i < n; i++) sq += (v[i] - mean) * (v[i] - mean);
        r.cv = n > 1 && mean > 0 ? sqrt(sq / (double)(n - 1)) / mean : 0;
        r.have = 1;
    } else if (b->have_aggregates) { /* --benchmark_report_aggregates_only: Google Benchmark's own */
        r.median = b->aggregate_median, r.cv = b->aggregate_cv, r.repetitions = b->aggregate_repetitions, r.have = 1;
    }
    return r;
}

typedef struct run_info {
    long repetitions;   /* --benchmark_repetitions' last value */
    double min_time;    /* --benchmark_min_time's */
    unsigned threads;
    wb_context ctx;
} run_info;

static double moved_bytes(const contender *ct)
{
    return ct->kind == MEMCPY ? 2.0 * (double)ct->bc->out_bytes : (double)(ct->bc->in_bytes + ct->bc->out_bytes);
}

/* The benchmarks of case `k`: contenders[first .. first+count). */
typedef struct case_range {
    size_t first, count;
} case_range;

static const result *memcpy_of(const contender *cts, const result *res, case_range cr)
{
    for (size_t i = cr.first; i < cr.first + cr.count; i++)
        if (cts[i].kind == MEMCPY && res[i].have) return &res[i];
    return NULL;
}

static const char *human_bytes(size_t bytes, char *out, size_t size)
{
    if (bytes >= 1000000000) snprintf(out, size, "%.2f GB", (double)bytes / 1e9);
    else if (bytes >= 1000000) snprintf(out, size, "%.1f MB", (double)bytes / 1e6);
    else if (bytes >= 1000) snprintf(out, size, "%.1f kB", (double)bytes / 1e3);
    else snprintf(out, size, "%zu B", bytes);
    return out;
}

static void print_header(FILE *out, const run_info *ri)
{
    fprintf(out, "widen-bench %s: %d CPUs at %.0f MHz", WIDEN_VERSION_STRING, ri->ctx.num_cpus, ri->ctx.mhz_per_cpu);
    if (ri->ctx.have_load_avg)
        fprintf(out, ", load average %.2f %.2f %.2f", ri->ctx.load_avg[0], ri->ctx.load_avg[1], ri->ctx.load_avg[2]);
    fprintf(out, "; %u thread%s; medians of %ld repetitions in random interleaving, min time %g s\n", ri->threads,
            ri->threads == 1 ? "" : "s", ri->repetitions, ri->min_time);
}

static void print_table(FILE *out, const bench_case *cases, const case_range *ranges, size_t ncases,
                        const contender *cts, const result *res, const wb_benchmark *bms, const run_info *ri)
{
    print_header(out, ri);
    for (size_t k = 0; k < ncases; k++) {
        const bench_case *bc = &cases[k];
        const result *base = memcpy_of(cts, res, ranges[k]);
        char in[32], outb[32];
        fprintf(out, "\n%s: %s in, %s out\n", bc->name, human_bytes(bc->in_bytes, in, sizeof in),
                human_bytes(bc->out_bytes, outb, sizeof outb));
        fprintf(out, "  %-20s %9s %11s %9s %6s\n", "contender", "out GB/s", "moved GB/s", "x memcpy", "CV %");
        for (size_t i = ranges[k].first; i < ranges[k].first + ranges[k].count; i++) {
            const contender *ct = &cts[i];
            char label[48];
            if (ct->kind == WIDEN && ct->store == WIDEN_STORE_CACHED && !strcmp(ct->store_name, "auto"))
                snprintf(label, sizeof label, "%s (cached)", ct->label);
            else if (ct->kind == WIDEN && !strcmp(ct->store_name, "auto"))
                snprintf(label, sizeof label, "%s (stream)", ct->label);
            else snprintf(label, sizeof label, "%s", ct->label);
            if (bms[i].failed) {
                fprintf(out, "  %-20s FAILED: %s\n", label, bms[i].error);
                continue;
            }
            if (!res[i].have) continue; /* filtered out */
            double moved = res[i].median, out_rate = moved * (double)bc->out_bytes / moved_bytes(ct);
            fprintf(out, "  %-20s %9.2f %11.2f ", label, out_rate / 1e9, moved / 1e9);
            if (base) fprintf(out, "%9.2f", moved / base->median);
            else fprintf(out, "%9s", "-");
            fprintf(out, " %6.1f\n", 100 * res[i].cv);
        }
    }
}

/* A JSON string: names hold what --map and --init accepted, but escape whatever they hold. */
static void json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static void print_json(const bench_case *cases, const case_range *ranges, size_t ncases, const contender *cts,
                       const result *res, const wb_benchmark *bms, const run_info *ri)
{
    printf("{\"widen_bench\":\"%s\",\"cpus\":%d,\"mhz_per_cpu\":%.0f,\"repetitions\":%ld,\"min_time\":%g,"
           "\"threads\":%u,\"results\":[", WIDEN_VERSION_STRING, ri->ctx.num_cpus, ri->ctx.mhz_per_cpu, ri->repetitions,
           ri->min_time, ri->threads);
    int first = 1;
    for (size_t k = 0; k < ncases; k++) {
        const result *base = memcpy_of(cts, res, ranges[k]);
        for (size_t i = ranges[k].first; i < ranges[k].first + ranges[k].count; i++) {
            const contender *ct = &cts[i];
            if (!res[i].have && !bms[i].failed) continue;
            const char *kernel = ct->kind == WIDEN ? widen_isa_name(ct->isa) : ct->label;
            printf("%s{\"case\":", first ? "" : ",");
            json_string(cases[k].name);
            printf(",\"kernel\":\"%s\",\"store\":", kernel);
            first = 0;
            if (ct->kind == WIDEN) printf("\"%s\"", ct->store_name);
            else printf("null");
            if (ct->kind == WIDEN && !strcmp(ct->store_name, "auto"))
                printf(",\"auto_store\":\"%s\"", ct->store == WIDEN_STORE_STREAM ? "stream" : "cached");
            printf(",\"threads\":%u,\"input_bytes\":%zu,\"output_bytes\":%zu,\"moved_bytes\":%.0f", ri->threads,
                   cases[k].in_bytes, cases[k].out_bytes, moved_bytes(ct));
            if (bms[i].failed) {
                printf(",\"error\":");
                json_string(bms[i].error);
                printf("}");
                continue;
            }
            double out_rate = res[i].median * (double)cases[k].out_bytes / moved_bytes(ct);
            printf(",\"output_bytes_per_second\":%.0f,\"bytes_per_second\":%.0f,\"ratio_to_memcpy\":", out_rate,
                   res[i].median);
            if (base) printf("%.4f", res[i].median / base->median);
            else printf("null");
            printf(",\"cv\":%.4f,\"repetitions\":%zu}", res[i].cv, res[i].repetitions);
        }
    }
    printf("]}\n");
}

/* The README's table: one row per case, one column per contender, ratios to memcpy. */
static void print_markdown(const bench_case *cases, const case_range *ranges, size_t ncases, const contender *cts,
                           const result *res, const run_info *ri)
{
    const char *columns[64];
    size_t ncol = 0;
    for (size_t k = 0; k < ncases; k++)
        for (size_t i = ranges[k].first; i < ranges[k].first + ranges[k].count; i++) {
            if (cts[i].kind == MEMCPY) continue;
            size_t j = 0;
            while (j < ncol && strcmp(columns[j], cts[i].label)) j++;
            if (j == ncol && ncol < 64) columns[ncol++] = cts[i].label;
        }
    printf("%d CPUs at %.0f MHz", ri->ctx.num_cpus, ri->ctx.mhz_per_cpu);
    if (ri->ctx.have_load_avg)
        printf(" (load average %.2f %.2f %.2f at the start)", ri->ctx.load_avg[0], ri->ctx.load_avg[1], ri->ctx.load_avg[2]);
    printf(", %u thread%s; medians of %ld repetitions in random interleaving, min time %g s; ratios to memcpy of the "
           "output (bytes read + written per second); **bold**: an AVX2/AVX-512 figure below %.2f\n\n", ri->threads,
           ri->threads == 1 ? "" : "s", ri->repetitions, ri->min_time, WB_TARGET);
    printf("| case | memcpy GB/s |");
    for (size_t j = 0; j < ncol; j++) printf(" %s |", columns[j]);
    printf("\n|---|---|");
    for (size_t j = 0; j < ncol; j++) printf("---|");
    printf("\n");
    char misses[8192] = "";
    size_t used = 0;
    for (size_t k = 0; k < ncases; k++) {
        const result *base = memcpy_of(cts, res, ranges[k]);
        if (!base) continue;
        printf("| %s | %.1f |", cases[k].name, base->median / 1e9);
        double best[WIDEN_ISA_COUNT];
        for (int i = 0; i < WIDEN_ISA_COUNT; i++) best[i] = -1;
        for (size_t j = 0; j < ncol; j++) {
            size_t i = ranges[k].first;
            while (i < ranges[k].first + ranges[k].count && strcmp(cts[i].label, columns[j])) i++;
            if (i == ranges[k].first + ranges[k].count || !res[i].have) {
                printf("  |");
                continue;
            }
            /* judged as shown: a 0.946 reads 0.95 and counts as 0.95 */
            double ratio = round(100 * res[i].median / base->median) / 100;
            int simd = cts[i].kind == WIDEN && (cts[i].isa == WIDEN_ISA_AVX2 || cts[i].isa == WIDEN_ISA_AVX512);
            if (simd && ratio > best[cts[i].isa]) best[cts[i].isa] = ratio;
            printf(simd && ratio < WB_TARGET ? " **%.2f** |" : " %.2f |", ratio);
        }
        printf("\n");
        for (int i = 0; i < WIDEN_ISA_COUNT; i++)
            if (best[i] >= 0 && best[i] < WB_TARGET && used < sizeof misses)
                used += (size_t)snprintf(misses + used, sizeof misses - used, "%s%s %s best %.2f", used ? "; " : "",
                                         cases[k].name, widen_isa_name((widen_isa)i), best[i]);
    }
    printf("\ntarget (>= %.2f x memcpy, best store mode) missed by: %s\n", WB_TARGET, used ? misses : "none");
}

/* ---------------------------------------------------------------------------------------------- */
/* main                                                                                             */

enum { OPT_SHAPE = 256, OPT_AXIS, OPT_TO, OPT_AT, OPT_INIT, OPT_MAP, OPT_DTYPE, OPT_CAST, OPT_ISA, OPT_STORE,
       OPT_THREADS, OPT_SUITE, OPT_JSON, OPT_MARKDOWN, OPT_CHECK, OPT_DUMP, OPT_VERSION, OPT_HELP };

static void print_help(void)
{
    fputs(usage, stdout);
}

static int version(void)
{
    printf("widen-bench %s\n", WIDEN_VERSION_STRING);
    printf("usable:");
    for (int i = 0; i < WIDEN_ISA_COUNT; i++)
        if (widen_isa_usable((widen_isa)i)) printf(" %s", widen_isa_name((widen_isa)i));
    printf("\ncpu: %s\n", *widen_cpu_features() ? widen_cpu_features() : "(no SIMD features widen uses)");
    return 0;
}

/* The README's standard cases. */
static const char *const suite_shapes[] = {"64,3,512,512", "20480,3,14,14", "16M,3"}; /* axis 1, to 4 */
static const char *const suite_dtypes[] = {"F32", "F16", "BF16"};

/* A comma-separated list of names out of `names`, or "all": bit i set for names[i]. */
static int parse_list(const char *flag, const char *text, const char *const *names, int count, unsigned *mask)
{
    *mask = 0;
    if (!strcmp(text, "all")) return *mask = (1u << count) - 1, 0;
    for (const char *p = text;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int i = 0;
        while (i < count && (strlen(names[i]) != len || strncmp(names[i], p, len))) i++;
        if (i == count) {
            char known[128] = "";
            for (int j = 0; j < count; j++) snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                                                     j ? (j == count - 1 ? " or " : ", ") : "", names[j]);
            return fail(WIDEN_EUSAGE, "%s: '%.*s' is not %s (or all)", flag, (int)len, p, known);
        }
        *mask |= 1u << i;
        if (!comma) return 0;
        p = comma + 1;
    }
}

/* The last value given to a --benchmark_ flag (Google Benchmark keeps the last one). */
static const char *last_flag(int argc, char **argv, const char *flag, const char *dflt)
{
    const char *v = dflt;
    size_t len = strlen(flag);
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], flag, len) && argv[i][len] == '=') v = argv[i] + len + 1;
    return v;
}

int main(int argc, char **argv)
{
    /* Google Benchmark's flags: ours as defaults first, then the user's; Initialize takes out what it
     * knows (and answers --help with our usage) and leaves the rest for the parser below. */
    char **args = calloc((size_t)argc + N_DEFAULT_FLAGS + 1, sizeof *args);
    if (!args) return fail(WIDEN_EIO, "out of memory");
    int nargs = 0;
    args[nargs++] = argv[0];
    for (size_t i = 0; i < N_DEFAULT_FLAGS; i++) args[nargs++] = (char *)default_flags[i];
    for (int i = 1; i < argc; i++) args[nargs++] = argv[i];
    run_info ri = {0};
    ri.repetitions = strtol(last_flag(nargs, args, "--benchmark_repetitions", "1"), NULL, 10);
    ri.min_time = strtod(last_flag(nargs, args, "--benchmark_min_time", "0.5"), NULL);
    int pass_through = 0, list_tests = 0;
    for (int i = 1; i < nargs; i++) {
        if (!strncmp(args[i], "--benchmark_format=", 19)) pass_through = 1;
        if (!strncmp(args[i], "--benchmark_list_tests", 22) && strcmp(args[i], "--benchmark_list_tests=false")) list_tests = 1;
    }
    if (list_tests) pass_through = 1;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return print_help(), 0;
    /* Google Benchmark explains a bad value of its own flags in a line of its own and keeps the flag
     * in argv: silenced here, the flag is then refused below in one line. */
    fflush(stderr);
    int saved_stderr = dup(2), null_fd = open("/dev/null", O_WRONLY);
    if (saved_stderr >= 0 && null_fd >= 0) dup2(null_fd, 2);
    wb_gbench_initialize(&nargs, args);
    fflush(stderr);
    if (saved_stderr >= 0 && null_fd >= 0) dup2(saved_stderr, 2);
    if (null_fd >= 0) close(null_fd);
    if (saved_stderr >= 0) close(saved_stderr);

    static const struct option options[] = {
        {"shape", required_argument, NULL, OPT_SHAPE}, {"axis", required_argument, NULL, OPT_AXIS},
        {"to", required_argument, NULL, OPT_TO},       {"at", required_argument, NULL, OPT_AT},
        {"init", required_argument, NULL, OPT_INIT},   {"map", required_argument, NULL, OPT_MAP},
        {"dtype", required_argument, NULL, OPT_DTYPE}, {"cast", required_argument, NULL, OPT_CAST},
        {"isa", required_argument, NULL, OPT_ISA},     {"store", required_argument, NULL, OPT_STORE},
        {"threads", required_argument, NULL, OPT_THREADS}, {"suite", no_argument, NULL, OPT_SUITE},
        {"json", no_argument, NULL, OPT_JSON},         {"markdown", no_argument, NULL, OPT_MARKDOWN},
        {"check", no_argument, NULL, OPT_CHECK},       {"dump", required_argument, NULL, OPT_DUMP},
        {"version", no_argument, NULL, OPT_VERSION},   {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0}};
    case_spec spec = {NULL, NULL, NULL, NULL, NULL, "F32", NULL, 1, 0};
    const char *isa_list = NULL, *store_list = "cached,stream", *dump = NULL;
    unsigned long long threads = 1;
    int suite = 0, json = 0, markdown = 0, check = 0, have_dtype = 0, have_axis = 0, o;
    opterr = 0;
    while ((o = getopt_long(nargs, args, ":h", options, NULL)) != -1) {
        switch (o) {
        case OPT_SHAPE: spec.shape = optarg; break;
        case OPT_AXIS: {
            char *end;
            errno = 0;
            spec.axis = strtol(optarg, &end, 10), have_axis = spec.axis_given = 1;
            if (!*optarg || *end || errno || spec.axis > WIDEN_MAX_RANK || spec.axis < -WIDEN_MAX_RANK)
                return fail(WIDEN_EUSAGE, "--axis: '%s' is not an axis", optarg);
            break;
        }
        case OPT_TO: spec.to = optarg; break;
        case OPT_AT: spec.at = optarg; break;
        case OPT_INIT: spec.init = optarg; break;
        case OPT_MAP: spec.map = optarg; break;
        case OPT_DTYPE: spec.dtype = optarg, have_dtype = 1; break;
        case OPT_CAST: spec.cast = optarg; break;
        case OPT_ISA: isa_list = optarg; break;
        case OPT_STORE: store_list = optarg; break;
        case OPT_THREADS:
            if (parse_uint(optarg, "--threads", 1, WB_MAX_THREADS, &threads)) return WIDEN_EUSAGE;
            break;
        case OPT_SUITE: suite = 1; break;
        case OPT_JSON: json = 1; break;
        case OPT_MARKDOWN: markdown = 1; break;
        case OPT_CHECK: check = 1; break;
        case OPT_DUMP: dump = optarg; break;
        case OPT_VERSION: return version();
        case 'h':
        case OPT_HELP: return print_help(), 0;
        case ':': return fail(WIDEN_EUSAGE, "%s needs a value (see widen-bench --help)", args[optind - 1]);
        default:
            if (!strncmp(args[optind - 1], "--benchmark_", 12))
                return fail(WIDEN_EUSAGE, "%s: not a Google Benchmark flag, or a bad value for one (see widen-bench --help)",
                            args[optind - 1]);
            return fail(WIDEN_EUSAGE, "%s: unknown option (see widen-bench --help)", args[optind - 1]);
        }
    }
    if (optind < nargs) return fail(WIDEN_EUSAGE, "'%s': widen-bench takes no operands (see widen-bench --help)", args[optind]);
    if (suite && (spec.shape || spec.map || spec.to || spec.at || spec.init || spec.cast || have_dtype || have_axis))
        return fail(WIDEN_EUSAGE, "--suite runs the README's cases: it takes no --shape, --axis, --to, --at, --init, "
                                  "--map, --dtype or --cast");
    if (!suite && !spec.shape) return fail(WIDEN_EUSAGE, "--shape (or --suite) is needed (see widen-bench --help)");
    if (spec.map && (spec.to || spec.at || spec.init)) return fail(WIDEN_EUSAGE, "--map, or --to with --at and --init: not both");
    if ((spec.at || spec.init) && !spec.to) return fail(WIDEN_EUSAGE, "--at and --init go with --to");
    if (json && markdown) return fail(WIDEN_EUSAGE, "--json and --markdown both want standard output: choose one");
    if ((json || markdown) && pass_through)
        return fail(WIDEN_EUSAGE, "--%s and Google Benchmark's --benchmark_format both want standard output "
                                  "(--benchmark_out=FILE writes its report to a file)", json ? "json" : "markdown");
    if (dump && suite) return fail(WIDEN_EUSAGE, "--dump writes one case: give --shape, not --suite");

    const char *isa_names[WIDEN_ISA_COUNT], *const store_names[] = {"auto", "cached", "stream"};
    for (int i = 0; i < WIDEN_ISA_COUNT; i++) isa_names[i] = widen_isa_name((widen_isa)i);
    unsigned isas = 0, stores = 0;
    if (isa_list && parse_list("--isa", isa_list, isa_names, WIDEN_ISA_COUNT, &isas)) return WIDEN_EUSAGE;
    if (!isa_list || !strcmp(isa_list, "all")) {
        isas = 0;
        for (int i = 0; i < WIDEN_ISA_COUNT; i++)
            if (widen_isa_usable((widen_isa)i)) isas |= 1u << i;
    }
    for (int i = 0; i < WIDEN_ISA_COUNT; i++)
        if ((isas >> i & 1) && !widen_isa_usable((widen_isa)i))
            return fail(WIDEN_EUSAGE, "--isa: this CPU (or this build) cannot run %s (it runs:%s%s%s%s)", isa_names[i],
                        widen_isa_usable(WIDEN_ISA_SCALAR) ? " scalar" : "", widen_isa_usable(WIDEN_ISA_AVX2) ? " avx2" : "",
                        widen_isa_usable(WIDEN_ISA_AVX512) ? " avx512" : "", widen_isa_usable(WIDEN_ISA_NEON) ? " neon" : "");
    if (parse_list("--store", store_list, store_names, 3, &stores)) return WIDEN_EUSAGE;

    /* The cases. */
    static bench_case cases[WB_MAX_CASES];
    size_t ncases = 0;
    int rc = 0;
    if (suite) {
        for (size_t s = 0; !rc && s < sizeof suite_shapes / sizeof *suite_shapes; s++)
            for (size_t d = 0; !rc && d < 3; d++) {
                case_spec cs = {suite_shapes[s], NULL, "4", NULL, NULL, suite_dtypes[d], NULL, 1, 1};
                rc = build_case(&cs, (unsigned)threads, &cases[ncases++]);
            }
        for (size_t from = 0; !rc && from < 3; from++)
            for (size_t to = 0; !rc && to < 3; to++) {
                if (from == to) continue;
                case_spec cs = {"64M", NULL, NULL, NULL, NULL, suite_dtypes[from], suite_dtypes[to], 0, 0};
                rc = build_case(&cs, (unsigned)threads, &cases[ncases++]);
            }
    } else {
        rc = build_case(&spec, (unsigned)threads, &cases[ncases++]);
    }
    if (rc) return rc;
    if (pool_start((unsigned)threads)) return fail(WIDEN_EIO, "cannot start %llu threads", threads);
    if (xnn_initialize(NULL) != xnn_status_success) return fail(WIDEN_EIO, "XNNPACK does not initialize");

    /* The contenders: memcpy, the peers that can do the job, each ISA in each store mode. */
    size_t most = ncases * (3 + WIDEN_ISA_COUNT * 3);
    contender *cts = calloc(most, sizeof *cts);
    wb_benchmark *bms = calloc(most, sizeof *bms);
    result *res = calloc(most, sizeof *res);
    case_range ranges[WB_MAX_CASES];
    if (!cts || !bms || !res) return fail(WIDEN_EIO, "out of memory");
    size_t n = 0;
    for (size_t k = 0; k < ncases; k++) {
        bench_case *bc = &cases[k];
        ranges[k].first = n;
        cts[n++] = (contender){bc, MEMCPY, WIDEN_ISA_SCALAR, WIDEN_STORE_CACHED, "", "memcpy"};
        if (bc->naive) cts[n++] = (contender){bc, NAIVE, WIDEN_ISA_SCALAR, WIDEN_STORE_CACHED, "", "naive"};
        if (bc->xnnpack) cts[n++] = (contender){bc, XNNPACK, WIDEN_ISA_SCALAR, WIDEN_STORE_CACHED, "", "xnnpack"};
        widen_store autostore = bc->out_bytes >= widen_stream_threshold() ? WIDEN_STORE_STREAM : WIDEN_STORE_CACHED;
        for (int i = 0; i < WIDEN_ISA_COUNT; i++) {
            if (!(isas >> i & 1)) continue;
            for (int m = 0; m < 3; m++) {
                if (!(stores >> m & 1)) continue;
                contender *ct = &cts[n++];
                *ct = (contender){bc, WIDEN, (widen_isa)i, m == 0 ? autostore : m == 1 ? WIDEN_STORE_CACHED : WIDEN_STORE_STREAM,
                                  store_names[m], ""};
                if (i == WIDEN_ISA_SCALAR) { /* one mode: the scalar kernel has no streaming stores */
                    ct->store = WIDEN_STORE_CACHED, ct->store_name = "cached";
                    m = 3;
                }
                snprintf(ct->label, sizeof ct->label, "%s_%s", isa_names[i], ct->store_name);
            }
        }
        ranges[k].count = n - ranges[k].first;
    }
    for (size_t i = 0; i < n; i++) {
        char *name = malloc(WB_NAME_SIZE + 64);
        if (!name) return fail(WIDEN_EIO, "out of memory");
        snprintf(name, WB_NAME_SIZE + 64, "%s/%s", cts[i].kind == WIDEN ? "widen" : cts[i].label, cts[i].bc->name);
        if (cts[i].kind == WIDEN)
            snprintf(name, WB_NAME_SIZE + 64, "widen_%s/%s", cts[i].label, cts[i].bc->name);
        bms[i] = (wb_benchmark){.name = name, .arg = &cts[i], .prepare = contender_prepare, .run = contender_run,
                                .check = cts[i].kind == MEMCPY ? NULL : contender_check, .release = contender_release,
                                .bytes_moved = moved_bytes(&cts[i])};
    }

    size_t most_src = 0, most_dst = 0;
    for (size_t k = 0; k < ncases; k++) {
        size_t in = cases[k].in_bytes > cases[k].out_bytes ? cases[k].in_bytes : cases[k].out_bytes;
        if (in > most_src) most_src = in;
        if (cases[k].out_bytes > most_dst) most_dst = cases[k].out_bytes;
    }
    if (!list_tests && arena_reserve(most_src, most_dst))
        return fail(WIDEN_EIO, "out of memory for %zu + %zu bytes of buffers", most_src, most_dst);

    /* The reference outputs (and --dump's files). */
    for (size_t k = 0; !list_tests && k < ncases; k++)
        if ((rc = reference(&cases[k], dump))) return rc;

    int failed = 0;
    if (check || dump) { /* every contender once, untimed */
        for (size_t i = 0; i < n; i++) {
            if (cts[i].kind == MEMCPY) continue;
            void *st = contender_prepare(&cts[i], 1);
            if (!st) return fail(WIDEN_EIO, "%s: setup failed (XNNPACK refused the job)", bms[i].name);
            contender_run(st);
            char error[256];
            if (contender_check(st, error, sizeof error)) {
                printf("FAILED %s\n", error);
                failed = 1;
            } else {
                printf("ok %s\n", bms[i].name);
            }
            contender_release(st);
        }
    } else {
        ri.threads = (unsigned)threads;
        FILE *out = pass_through ? stderr : stdout;
        wb_gbench_run(bms, n, pass_through, !pass_through && isatty(2), &ri.ctx);
        for (size_t i = 0; i < n; i++) {
            res[i] = summarize(&bms[i]);
            if (bms[i].failed) {
                failed = 1;
                fail(WIDEN_DIFFERENT, "%s", bms[i].error);
            }
        }
        if (list_tests) ;
        else if (json) print_json(cases, ranges, ncases, cts, res, bms, &ri);
        else if (markdown) print_markdown(cases, ranges, ncases, cts, res, &ri);
        else print_table(out, cases, ranges, ncases, cts, res, bms, &ri);
    }

    for (size_t i = 0; i < n; i++) free((char *)bms[i].name);
    for (size_t k = 0; k < ncases; k++) free(cases[k].map);
    free(cts), free(bms), free(res), free(args);
    xnn_deinitialize();
    pool_stop();
    arena_free();
    return failed ? WIDEN_DIFFERENT : 0;
}
