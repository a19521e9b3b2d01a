/* remap.c: the ISA-independent remap driver, job validation and the public kernel entry points. */
#include <string.h>

#include "../src/error.h"
#include "kernels.h"

/* The bytes of `value` in dtype `dtype` (computable dtypes only). */
void widen_const_element(widen_dtype dtype, float value, unsigned char out[8])
{
    uint32_t bits;
    memcpy(&bits, &value, 4);
    memset(out, 0, 8);
    if (dtype == WIDEN_F32) {
        memcpy(out, &bits, 4);
    } else {
        uint16_t h = dtype == WIDEN_F16 ? widen_f32_to_f16(bits) : widen_f32_to_bf16(bits);
        memcpy(out, &h, 2);
    }
}

/* Consecutive map entries that one call can serve: copies of consecutive input channels (one run
 * of count * inner elements when both sides are channel-contiguous), or equal fills. */
static size_t segment_length(const widen_remap_job *j, size_t n)
{
    const widen_map_entry *e = &j->map[n];
    int contiguous = j->src_chan_stride == j->inner && j->dst_chan_stride == j->inner && e->kind <= WIDEN_MAP_CONST;
    size_t len = 1;
    while (contiguous && n + len < j->channels) {
        const widen_map_entry *f = &j->map[n + len];
        if (f->kind != e->kind) break;
        if (e->kind == WIDEN_MAP_SOURCE && f->channel != e->channel + len) break;
        if (e->kind == WIDEN_MAP_CONST && memcmp(&f->value, &e->value, sizeof e->value) != 0) break;
        len++;
    }
    return len;
}

typedef struct segment {
    const widen_map_entry *entry;
    size_t first;  /* output channel */
    size_t count;  /* elements per row */
    unsigned char pattern[WIDEN_PATTERN_BYTES]; /* fills */
    int uniform;   /* a fill whose bytes are all pattern[0] (zeros) */
} segment;

/* Elements of `dtype` (F32, F16, BF16) to fp32 and back, through the ISA's converts. */
static void to_f32(const widen_kernels *k, widen_dtype dtype, float *out, const unsigned char *in, size_t n)
{
    if (dtype == WIDEN_F32) memcpy(out, in, n * 4);
    else k->convert[widen_compute_index(dtype)][WIDEN_CK_F32](out, in, n, 0);
}

static void from_f32(const widen_kernels *k, widen_dtype dtype, unsigned char *out, const float *in, size_t n, int stream)
{
    if (dtype == WIDEN_F32) memcpy(out, in, n * 4);
    else k->convert[WIDEN_CK_F32][widen_compute_index(dtype)](out, in, n, stream);
}

/* SCALE, MEAN, SUM, NORMAL: computed in fp32 blocks that stay in cache, rounded once on the way out. */
static void run_arithmetic(const widen_kernels *k, const widen_remap_job *j, const segment *g, size_t r, int stream)
{
    enum { BLOCK = 256 };
    float acc[BLOCK], tmp[BLOCK];
    size_t ssz = widen_dtype_bits(j->src_dtype) / 8, dsz = widen_dtype_bits(j->dst_dtype) / 8;
    const widen_map_entry *e = g->entry;
    const unsigned char *row = (const unsigned char *)j->src + r * j->src_row_stride * ssz;
    unsigned char *d = (unsigned char *)j->dst + (r * j->dst_row_stride + g->first * j->dst_chan_stride) * dsz;
    for (size_t at = 0; at < g->count; at += BLOCK) {
        size_t m = g->count - at < BLOCK ? g->count - at : BLOCK;
        switch (e->kind) {
        case WIDEN_MAP_SCALE:
            to_f32(k, j->src_dtype, acc, row + ((size_t)e->channel * j->src_chan_stride + at) * ssz, m);
            k->mul_f32(acc, m, e->value);
            break;
        case WIDEN_MAP_MEAN:
        case WIDEN_MAP_SUM:
            to_f32(k, j->src_dtype, acc, row + at * ssz, m);
            for (size_t c = 1; c < j->src_channels; c++) {
                to_f32(k, j->src_dtype, tmp, row + (c * j->src_chan_stride + at) * ssz, m);
                k->add_f32(acc, tmp, m);
            }
            if (e->kind == WIDEN_MAP_MEAN) k->div_f32(acc, m, (float)j->src_channels);
            break;
        default: /* NORMAL */
            k->normal_f32(acc, m, e->value, e->seed,
                          j->index + r * j->dst_row_stride + g->first * j->dst_chan_stride + at);
            break;
        }
        /* Which NaN an operation on two NaNs returns depends on operand order, which compilers and
         * ISAs choose freely: NaN results of arithmetic become the one canonical quiet NaN. */
        for (size_t i = 0; i < m; i++)
            if (acc[i] != acc[i]) memcpy(&acc[i], &(uint32_t){0x7fc00000u}, 4);
        from_f32(k, j->dst_dtype, d + at * dsz, acc, m, stream);
    }
}

static void run_segment(const widen_kernels *k, const widen_remap_job *j, widen_convert_fn convert, const segment *g,
                        size_t r, size_t ssz, size_t dsz, int stream)
{
    unsigned char *d = (unsigned char *)j->dst + (r * j->dst_row_stride + g->first * j->dst_chan_stride) * dsz;
    if (g->entry->kind > WIDEN_MAP_CONST) {
        run_arithmetic(k, j, g, r, stream);
        return;
    }
    if (g->entry->kind != WIDEN_MAP_SOURCE) {
        if (g->uniform && !stream) memset(d, g->pattern[0], g->count * dsz); /* libc's memset: as fast as any */
        else k->fill(d, g->count * dsz, g->pattern, dsz, stream);
        return;
    }
    const unsigned char *s =
        (const unsigned char *)j->src + (r * j->src_row_stride + (size_t)g->entry->channel * j->src_chan_stride) * ssz;
    if (convert)
        convert(d, s, g->count, stream);
    else
        k->copy(d, s, g->count * dsz, stream);
}

/* The segments of the map entries from channel n on, at most `most` of them; returns how many. */
static size_t plan_segments(const widen_remap_job *j, size_t n, segment *segs, size_t most, size_t *next)
{
    size_t dsz = widen_dtype_bits(j->dst_dtype) / 8, used = 0;
    for (; used < most && n < j->channels; used++) {
        segment *g = &segs[used];
        size_t len = segment_length(j, n);
        unsigned char element[8] = {0};
        g->entry = &j->map[n];
        g->first = n;
        g->count = len * j->inner;
        if (g->entry->kind == WIDEN_MAP_CONST) widen_const_element(j->dst_dtype, g->entry->value, element);
        for (size_t b = 0; b < sizeof g->pattern; b++) g->pattern[b] = element[b % dsz];
        g->uniform = 1;
        for (size_t b = 1; b < dsz; b++) g->uniform &= element[b] == element[0];
        n += len;
    }
    *next = n;
    return used;
}

/* Streaming stores are fast only on whole, aligned cache lines, and a line written partly by them
 * and partly by ordinary stores is slow. A dense output that is all copies and fills (rows of a
 * few hundred bytes: [out, 3, 14, 14] -> 4) is therefore written as one stream of lines: runs are
 * streamed line by line, and each line that two runs (or two rows) share is put together here and
 * streamed once. Only the output's first and last partial lines take ordinary stores. */
typedef struct line_writer {
    const widen_kernels *k;
    unsigned char *start, *at; /* the output, and the next byte to write */
    _Alignas(64) unsigned char line[WIDEN_LINE];
} line_writer;

/* Emits the line that ends at w->at (a line boundary). */
static void line_flush(line_writer *w)
{
    unsigned char *first = w->at - WIDEN_LINE;
    if (first >= w->start) w->k->copy(first, w->line, WIDEN_LINE, 1);
    else memcpy(w->start, w->line + (w->start - first), (size_t)(w->at - w->start)); /* the output's first line */
}

/* `bytes` output bytes from src, or (src NULL) from pattern: an element of `size` repeated, starting
 * at the phase `bytes` began with. */
static void line_put(line_writer *w, const unsigned char *src, const unsigned char *pattern, size_t size, size_t bytes)
{
    size_t phase = 0; /* pattern bytes written so far, modulo size */
    while (bytes) {
        size_t off = (uintptr_t)w->at % WIDEN_LINE;
        if (off == 0 && bytes >= WIDEN_LINE) {
            size_t lines = bytes - bytes % WIDEN_LINE;
            if (src) w->k->copy(w->at, src, lines, 1);
            else w->k->fill(w->at, lines, pattern + phase, size, 1); /* lines keep the phase */
            w->at += lines, bytes -= lines;
            if (src) src += lines;
            continue;
        }
        size_t take = WIDEN_LINE - off < bytes ? WIDEN_LINE - off : bytes;
        memcpy(w->line + off, src ? src : pattern + phase, take);
        w->at += take, bytes -= take;
        if (src) src += take;
        else phase = (phase + take) % size;
        if ((uintptr_t)w->at % WIDEN_LINE == 0) line_flush(w);
    }
}

/* The output's last partial line, with ordinary stores. */
static void line_finish(line_writer *w)
{
    size_t off = (uintptr_t)w->at % WIDEN_LINE;
    if (off == 0) return;
    unsigned char *first = w->at - off;
    if (first < w->start) first = w->start;
    memcpy(first, w->line + ((uintptr_t)first % WIDEN_LINE), (size_t)(w->at - first));
}

/* Returns 1 if the job (no cast) is copies and fills only, into one dense output: the line writer's. */
static int dense_moves(const widen_remap_job *j)
{
    if (j->src_dtype != j->dst_dtype || j->dst_chan_stride != j->inner || j->dst_row_stride != j->channels * j->inner)
        return 0;
    for (size_t n = 0; n < j->channels; n++)
        if (j->map[n].kind > WIDEN_MAP_CONST) return 0;
    return 1;
}

static void remap_lines(const widen_kernels *k, const widen_remap_job *j)
{
    size_t size = widen_dtype_bits(j->dst_dtype) / 8;
    line_writer w = {.k = k, .start = j->dst, .at = j->dst};
    enum { BATCH = 16 };
    segment segs[BATCH];
    size_t next, used = plan_segments(j, 0, segs, BATCH, &next);
    int once = next >= j->channels; /* the whole map in one batch, planned once for every row */
    for (size_t r = 0; r < j->rows; r++) {
        const unsigned char *row = (const unsigned char *)j->src + r * j->src_row_stride * size;
        for (size_t n = 0; n < j->channels;) {
            if (once) n = j->channels;
            else used = plan_segments(j, n, segs, BATCH, &n);
            for (size_t g = 0; g < used; g++) {
                const segment *s = &segs[g];
                if (s->entry->kind == WIDEN_MAP_SOURCE)
                    line_put(&w, row + (size_t)s->entry->channel * j->src_chan_stride * size, NULL, size, s->count * size);
                else
                    line_put(&w, NULL, s->pattern, size, s->count * size);
            }
        }
    }
    line_finish(&w);
}

/* Row by row (each output row written front to back), one call per segment. */
static void remap_runs(const widen_kernels *k, const widen_remap_job *j, int stream)
{
    size_t ssz = widen_dtype_bits(j->src_dtype) / 8, dsz = widen_dtype_bits(j->dst_dtype) / 8;
    widen_convert_fn convert = NULL;
    if (j->src_dtype != j->dst_dtype)
        convert = k->convert[widen_compute_index(j->src_dtype)][widen_compute_index(j->dst_dtype)];
    enum { BATCH = 16 }; /* segments planned at a time: rows are walked once per batch */
    segment segs[BATCH];
    for (size_t n = 0; n < j->channels;) {
        size_t used = plan_segments(j, n, segs, BATCH, &n);
        for (size_t r = 0; r < j->rows; r++)
            for (size_t g = 0; g < used; g++) run_segment(k, j, convert, &segs[g], r, ssz, dsz, stream);
    }
}

void widen_remap_run(const widen_kernels *k, const widen_remap_job *j)
{
    size_t dsz = widen_dtype_bits(j->dst_dtype) / 8;
    int stream = j->store == WIDEN_STORE_STREAM ||
                 (j->store == WIDEN_STORE_AUTO && j->rows * j->channels * j->inner * dsz >= widen_stream_threshold());
    widen_remap_job rest = *j;
    size_t done = k->rows && j->src_dtype == j->dst_dtype ? k->rows(j, stream) : 0;
    if (done) {
        rest.src = (const unsigned char *)j->src + done * j->src_row_stride * dsz;
        rest.dst = (unsigned char *)j->dst + done * j->dst_row_stride * dsz;
        rest.rows -= done;
    }
    if (stream && k->fence && dense_moves(&rest)) remap_lines(k, &rest);
    else remap_runs(k, &rest, stream);
    if (stream && k->fence) k->fence();
}

static widen_status check_job(const widen_remap_job *j, widen_error *err)
{
    if ((unsigned)j->src_dtype >= WIDEN_DTYPE_COUNT || (unsigned)j->dst_dtype >= WIDEN_DTYPE_COUNT)
        return widen_fail(err, WIDEN_EUSAGE, "remap: unknown dtype");
    if (j->src_dtype != j->dst_dtype) {
        if (widen_compute_index(j->src_dtype) < 0 || widen_compute_index(j->dst_dtype) < 0)
            return widen_fail(err, WIDEN_EUSAGE, "remap: cannot convert %s to %s (only F32, F16, BF16)",
                              widen_dtype_name(j->src_dtype), widen_dtype_name(j->dst_dtype));
    } else {
        unsigned bits = widen_dtype_bits(j->src_dtype);
        if (bits % 8 || bits > 64)
            return widen_fail(err, WIDEN_EUSAGE, "remap: %s elements are not 1, 2, 4 or 8 bytes",
                              widen_dtype_name(j->src_dtype));
    }
    for (size_t n = 0; n < j->channels; n++) {
        widen_map_kind kind = j->map[n].kind;
        if ((unsigned)kind > WIDEN_MAP_NORMAL) return widen_fail(err, WIDEN_EUSAGE, "remap: unknown map entry kind");
        if (kind > WIDEN_MAP_ZERO && (widen_compute_index(j->dst_dtype) < 0 || widen_compute_index(j->src_dtype) < 0))
            return widen_fail(err, WIDEN_EUSAGE, "remap: const, scaled, mean, sum and normal entries need F32, F16 or "
                              "BF16 tensors, not %s", widen_dtype_name(j->src_dtype));
        if ((kind == WIDEN_MAP_MEAN || kind == WIDEN_MAP_SUM) && j->src_channels == 0)
            return widen_fail(err, WIDEN_EUSAGE, "remap: mean and sum entries need src_channels");
    }
    return WIDEN_OK;
}

static const widen_kernels *kernels_or_fail(widen_isa isa, widen_error *err)
{
    if (isa == WIDEN_ISA_COUNT) isa = widen_isa_active();
    if ((unsigned)isa >= WIDEN_ISA_COUNT || !widen_isa_usable(isa)) {
        widen_fail(err, WIDEN_EUSAGE, "ISA %s is not usable here",
                   (unsigned)isa < WIDEN_ISA_COUNT ? widen_isa_name(isa) : "?");
        return NULL;
    }
    return widen_kernels_for(isa);
}

widen_status widen_remap(const widen_remap_job *job, widen_isa isa, widen_error *err)
{
    if (!job) return widen_fail(err, WIDEN_EUSAGE, "widen_remap needs a job");
    const widen_kernels *k = kernels_or_fail(isa, err);
    if (!k) return WIDEN_EUSAGE;
    widen_status st = check_job(job, err);
    if (st) return st;
    widen_remap_run(k, job);
    return WIDEN_OK;
}

widen_status widen_cast(widen_dtype from, widen_dtype to, const void *src, void *dst, size_t n,
                        widen_isa isa, widen_error *err)
{
    if ((!src || !dst) && n) return widen_fail(err, WIDEN_EUSAGE, "widen_cast needs its source and destination");
    widen_map_entry identity = {.kind = WIDEN_MAP_SOURCE, .channel = 0};
    widen_remap_job job = {.src = src, .dst = dst, .src_dtype = from, .dst_dtype = to, .rows = 1,
                           .channels = 1, .inner = n, .map = &identity};
    return widen_remap(&job, isa, err);
}
