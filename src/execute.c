/* execute.c: the data path: every output tensor, in order, in bounded chunks, through the kernels
 * and a hash, into a sink (a file for apply, a comparison for verify). */
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>

#include "../kernels/kernels.h"
#include "internal.h"

enum { CHUNK = 4u << 20 }; /* output bytes produced per step */

typedef struct exec_state {
    const widen_checkpoint *ckpt;
    const widen_exec_options *opt;
    const widen_kernels *kernels; /* remaps */
    const widen_kernels *hasher;  /* hashes: the active ISA's, whatever the remap ISA */
    widen_pool *pool;
    unsigned char *buffer;
    widen_hash_state *in_hash, *out_hash;
    uint64_t in_cursor; /* input bytes of the current tensor hashed so far, in order */
    uint64_t done, total;
    widen_sink_fn sink;
    void *sink_user;
    int no_copy; /* the sink's copy said it cannot copy here (another filesystem): stop asking */
} exec_state;

/* Hashes the part of input span [begin, begin+len) of the current tensor that continues the
 * in-order prefix hashed so far; spans read out of order are hashed by a pass at the end. */
static void hash_input_span(exec_state *s, const widen_tensor_info *t, uint64_t begin, uint64_t len)
{
    if (begin <= s->in_cursor && begin + len > s->in_cursor) {
        s->hasher->hash_update(s->in_hash, s->ckpt->map + t->offset + s->in_cursor,
                            (size_t)(begin + len - s->in_cursor));
        s->in_cursor = begin + len;
    }
}

static widen_status emit(exec_state *s, size_t index, uint64_t offset, const void *data, size_t len,
                         widen_error *err)
{
    s->hasher->hash_update(s->out_hash, data, len);
    widen_status st = s->sink(s->sink_user, index, offset, data, len, err);
    if (st) return st;
    s->done += len;
    if (s->opt->progress && s->opt->progress(s->opt->progress_user, s->done, s->total))
        return widen_fail(err, WIDEN_EINTERRUPTED, "interrupted");
    return WIDEN_OK;
}

typedef struct split_job {
    const widen_kernels *kernels;
    widen_remap_job job;
    size_t parts;
    int by_rows; /* split rows, else split the inner run */
} split_job;

static void run_part(void *user, size_t part)
{
    const split_job *sj = user;
    widen_remap_job j = sj->job;
    size_t total = sj->by_rows ? j.rows : j.inner;
    size_t lo = total * part / sj->parts, hi = total * (part + 1) / sj->parts;
    size_t ssz = widen_dtype_bits(j.src_dtype) / 8, dsz = widen_dtype_bits(j.dst_dtype) / 8;
    if (sj->by_rows) {
        j.src = (const unsigned char *)j.src + lo * j.src_row_stride * ssz;
        j.dst = (unsigned char *)j.dst + lo * j.dst_row_stride * dsz;
        j.rows = hi - lo;
        j.index += lo * j.dst_row_stride;
    } else {
        j.src = (const unsigned char *)j.src + lo * ssz;
        j.dst = (unsigned char *)j.dst + lo * dsz;
        j.inner = hi - lo;
        j.index += lo;
    }
    if (hi == lo) return;
    widen_remap_run(sj->kernels, &j);
}

/* Runs a job on the pool: row blocks when there are enough rows, else slices of the inner run. The
 * kernels are elementwise, so the bytes do not depend on the split. */
static void run_job(exec_state *s, const widen_remap_job *job, size_t out_bytes)
{
    unsigned threads = widen_pool_threads(s->pool);
    split_job sj = {.kernels = s->kernels, .job = *job, .parts = 1, .by_rows = job->rows >= threads};
    if (threads > 1 && out_bytes >= (256u << 10)) sj.parts = threads;
    widen_pool_run(s->pool, sj.parts, run_part, &sj);
}

/* Untouched bytes are moved by the sink's copy where it has one (the kernel copies page cache to
 * page cache) while a second thread hashes them from the mapping, and computes their CRC-32 when the
 * sink wants it: one read of each byte, in blocks small enough to stay in cache between the two. */
enum { BLOCK = 256u << 10, COPY_MIN = 1u << 20 };

static void hash_copied(exec_state *s, widen_plan_tensor *p, uint32_t *crc)
{
    const widen_tensor_info *t = p->in;
    s->hasher->hash_reset(s->out_hash);
    for (uint64_t off = 0; off < t->nbytes; off += CHUNK) {
        size_t len = (size_t)(t->nbytes - off < CHUNK ? t->nbytes - off : CHUNK);
        for (size_t at = 0; at < len; at += BLOCK) {
            const unsigned char *block = s->ckpt->map + t->offset + off + at;
            size_t n = len - at < BLOCK ? len - at : BLOCK;
            s->hasher->hash_update(s->out_hash, block, n);
            if (crc) *crc = libdeflate_crc32(*crc, block, n);
        }
        widen_release(s->ckpt, t->offset + off, len);
    }
    p->in_hash = p->out_hash = s->hasher->hash_digest(s->out_hash);
}

typedef struct copy_job {
    exec_state *s;
    widen_plan *plan;
    size_t first, last;
    uint64_t bytes;
    uint32_t crc;
    widen_status st;
    widen_error err;
} copy_job;

/* Part 0 moves the run (the kernel copies), part 1 hashes it from the mapping, side by side. The
 * copy goes in steps of COPY_STEP with progress after each, so that a long untouched run does not
 * show as one jump (the progress callback is then called from the copying thread). */
enum { COPY_STEP = 64u << 20 };

static void copy_part(void *user, size_t part)
{
    copy_job *j = user;
    if (part == 0) {
        exec_state *s = j->s;
        uint64_t in_offset = j->plan->tensors[j->first].in->offset;
        j->st = WIDEN_OK;
        for (uint64_t at = 0; at < j->bytes && !j->st; at += COPY_STEP) {
            size_t len = (size_t)(j->bytes - at < COPY_STEP ? j->bytes - at : COPY_STEP);
            j->st = s->opt->copy(s->sink_user, j->first, at, in_offset + at, len, &j->err);
            /* "cannot copy here" only means so before the first byte; later, the input ended */
            if (j->st == WIDEN_EUSAGE && at > 0)
                j->st = widen_fail(&j->err, WIDEN_EIO, "the input ended early (it changed while widen read it)");
            else if (!j->st && at + len < j->bytes && s->opt->progress &&
                     s->opt->progress(s->opt->progress_user, s->done + at + len, s->total))
                j->st = widen_fail(&j->err, WIDEN_EINTERRUPTED, "interrupted");
        }
        return;
    }
    for (size_t i = j->first; i <= j->last; i++) hash_copied(j->s, &j->plan->tensors[i], j->s->opt->copied ? &j->crc : NULL);
}

/* Untouched tensors from `first` on that lie back to back in the input as in the output move in one
 * copy (the kernel copies a long run far faster than many short ones); returns how many did, 0 if
 * the sink has no copy here. */
static size_t copy_run(exec_state *s, widen_plan *plan, size_t first, widen_status *st, widen_error *err)
{
    if (!s->opt->copy || s->no_copy) return 0;
    size_t last = first;
    uint64_t bytes = plan->tensors[first].in->nbytes;
    while (!s->opt->copy_one_item && last + 1 < plan->count && plan->tensors[last + 1].op == WIDEN_OP_COPY &&
           !plan->tensors[last + 1].strided &&
           plan->tensors[last + 1].in->offset == plan->tensors[last].in->offset + plan->tensors[last].in->nbytes) {
        last++;
        bytes += plan->tensors[last].in->nbytes;
    }
    /* short runs go through the sink, buffered: a system call and two threads' handover per record of
     * a few bytes would cost far more than the bytes */
    if (bytes < COPY_MIN) return 0;
    copy_job job = {.s = s, .plan = plan, .first = first, .last = last, .bytes = bytes};
    const widen_plan_tensor *only = first == last ? &plan->tensors[first] : NULL;
    int crc_known = only && only->crc_known;
    /* the bytes are read only to be hashed, or for a CRC-32 the sink needs and nothing gives */
    int read = !s->opt->unhashed_copies || (s->opt->copied && !crc_known);
    if (read && widen_pool_threads(s->pool) > 1) {
        widen_pool_run(s->pool, 2, copy_part, &job);
    } else {
        copy_part(&job, 0);
        if (read && job.st == WIDEN_OK) copy_part(&job, 1);
    }
    if (job.st == WIDEN_EUSAGE) { /* no copy here: the caller sends the bytes, these and all that follow */
        s->no_copy = 1;
        return 0;
    }
    *st = job.st;
    if (*st && err) *err = job.err;
    if (!*st && s->opt->copied) *st = s->opt->copied(s->sink_user, first, bytes, crc_known ? only->crc : job.crc, err);
    if (!*st) {
        s->done += bytes;
        if (s->opt->progress && s->opt->progress(s->opt->progress_user, s->done, s->total))
            *st = widen_fail(err, WIDEN_EINTERRUPTED, "interrupted");
    }
    return last - first + 1;
}

static widen_status copy_tensor(exec_state *s, size_t index, widen_plan_tensor *p, widen_error *err)
{
    const widen_tensor_info *t = p->in;
    s->hasher->hash_reset(s->out_hash);
    for (uint64_t off = 0; off < t->nbytes; off += CHUNK) {
        size_t len = (size_t)(t->nbytes - off < CHUNK ? t->nbytes - off : CHUNK);
        widen_status st = emit(s, index, off, s->ckpt->map + t->offset + off, len, err);
        widen_release(s->ckpt, t->offset + off, len);
        if (st) return st;
    }
    p->in_hash = p->out_hash = s->hasher->hash_digest(s->out_hash);
    return WIDEN_OK;
}

/* A strided torch tensor left alone or only cast: its elements gathered in row-major order, a step
 * at a time, and cast through the kernels when the plan casts it. Its input hash is of the gathered
 * bytes. The pages of its storage span stay mapped until the end, since a transposed view walks
 * them many times. */
static widen_status gather_tensor(exec_state *s, size_t index, widen_plan_tensor *p, widen_error *err)
{
    size_t t = (size_t)(p->in - s->ckpt->tensors);
    widen_status st = widen_tensor_check_strided(s->ckpt, t, err);
    if (st) return st;
    size_t ssz = widen_dtype_bits(p->in->dtype) / 8, dsz = widen_dtype_bits(p->dtype) / 8;
    uint64_t numel = widen_tensor_elements(s->ckpt, t), per = CHUNK / (ssz > dsz ? ssz : dsz);
    int cast = p->op != WIDEN_OP_COPY;
    unsigned char *gathered = cast ? malloc(CHUNK) : s->buffer;
    if (!gathered) return widen_fail(err, WIDEN_EIO, "out of memory");
    widen_remap_job job = {.src_dtype = p->in->dtype, .dst_dtype = p->dtype, .rows = 1, .channels = 1,
                           .src_channels = 1, .map = p->map, .src = gathered, .dst = s->buffer,
                           .store = WIDEN_STORE_CACHED};
    s->hasher->hash_reset(s->in_hash);
    s->hasher->hash_reset(s->out_hash);
    for (uint64_t n = 0; n < numel && !st; n += per) {
        uint64_t count = numel - n < per ? numel - n : per;
        widen_tensor_gather(s->ckpt, t, n, count, gathered);
        s->hasher->hash_update(s->in_hash, gathered, (size_t)(count * ssz));
        if (cast) {
            job.inner = job.src_row_stride = job.src_chan_stride = job.dst_row_stride = job.dst_chan_stride = (size_t)count;
            job.index = n;
            run_job(s, &job, (size_t)(count * dsz));
        }
        st = emit(s, index, n * dsz, s->buffer, (size_t)(count * dsz), err);
    }
    widen_release(s->ckpt, p->in->offset, widen_tensor_span(s->ckpt, t));
    if (cast) free(gathered);
    if (st) return st;
    p->in_hash = s->hasher->hash_digest(s->in_hash);
    p->out_hash = s->hasher->hash_digest(s->out_hash);
    return WIDEN_OK;
}

static widen_status remap_tensor(exec_state *s, size_t index, widen_plan_tensor *p, widen_error *err)
{
    const widen_tensor_info *t = p->in;
    size_t ssz = widen_dtype_bits(t->dtype) / 8, dsz = widen_dtype_bits(p->dtype) / 8;
    const unsigned char *base = s->ckpt->map + t->offset;
    uint64_t in_row = (uint64_t)p->in_channels * p->inner, out_row = (uint64_t)p->channels * p->inner;
    s->hasher->hash_reset(s->in_hash);
    s->hasher->hash_reset(s->out_hash);
    s->in_cursor = 0;
    widen_remap_job job = {.src_dtype = t->dtype, .dst_dtype = p->dtype, .inner = p->inner,
                           .src_channels = p->in_channels,
                           .src_row_stride = in_row, .src_chan_stride = p->inner,
                           .dst_row_stride = out_row, .dst_chan_stride = p->inner, .dst = s->buffer,
                           .store = WIDEN_STORE_CACHED /* the step's output is written out right away */};
    widen_status st = WIDEN_OK;
    uint64_t out_off = 0;
    /* a strided input is gathered, a step's rows at a time, in row-major order */
    size_t ti = (size_t)(t - s->ckpt->tensors);
    unsigned char *gathered = NULL;
    if (p->strided) {
        if (out_row * dsz > CHUNK || in_row * ssz > CHUNK)
            return widen_fail(err, WIDEN_EFORMAT, "%s: tensor '%s' is strided and its rows are over %u MiB; widen does "
                              "not remap it", s->ckpt->path, p->name, CHUNK >> 20);
        if ((st = widen_tensor_check_strided(s->ckpt, ti, err))) return st;
        if (!(gathered = malloc(CHUNK))) return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    if (out_row * dsz <= CHUNK) {
        /* whole rows per step: the input of a step is one contiguous span */
        uint64_t per = out_row ? CHUNK / (out_row * dsz) : p->outer;
        if (gathered && in_row && CHUNK / (in_row * ssz) < per) per = CHUNK / (in_row * ssz);
        for (uint64_t r = 0; r < p->outer && !st; r += per) {
            uint64_t rows = p->outer - r < per ? p->outer - r : per;
            job.src = base + r * in_row * ssz;
            if (gathered) {
                widen_tensor_gather(s->ckpt, ti, r * in_row, rows * in_row, gathered);
                s->hasher->hash_update(s->in_hash, gathered, (size_t)(rows * in_row * ssz));
                job.src = gathered;
            }
            job.rows = (size_t)rows;
            job.index = r * out_row;
            job.channels = p->channels;
            job.map = p->map;
            size_t len = (size_t)(rows * out_row * dsz);
            run_job(s, &job, len);
            if (!gathered) hash_input_span(s, t, r * in_row * ssz, rows * in_row * ssz);
            st = emit(s, index, out_off, s->buffer, len, err);
            if (!gathered) widen_release(s->ckpt, t->offset + r * in_row * ssz, rows * in_row * ssz);
            out_off += len;
        }
        if (gathered) {
            widen_release(s->ckpt, t->offset, widen_tensor_span(s->ckpt, ti));
            free(gathered);
        }
    } else {
        /* a row is larger than a step: one channel's run at a time, in output order */
        uint64_t per = CHUNK / dsz;
        job.rows = 1;
        job.channels = 1;
        for (uint64_t r = 0; r < p->outer && !st; r++) {
            for (uint64_t n = 0; n < p->channels && !st; n++) {
                const widen_map_entry *m = &p->map[n];
                for (uint64_t i = 0; i < p->inner && !st; i += per) {
                    uint64_t count = p->inner - i < per ? p->inner - i : per;
                    /* point src at channel 0 so that the kernel's channel offset lands on m->channel */
                    job.src = base + (r * in_row + i) * ssz;
                    job.inner = (size_t)count;
                    job.map = m;
                    job.index = r * out_row + (uint64_t)n * p->inner + i;
                    size_t len = (size_t)(count * dsz);
                    run_job(s, &job, len);
                    uint64_t span = (r * in_row + (uint64_t)m->channel * p->inner + i) * ssz;
                    if (m->kind == WIDEN_MAP_SOURCE || m->kind == WIDEN_MAP_SCALE) hash_input_span(s, t, span, count * ssz);
                    st = emit(s, index, out_off, s->buffer, len, err);
                    if (m->kind == WIDEN_MAP_SOURCE || m->kind == WIDEN_MAP_SCALE) widen_release(s->ckpt, t->offset + span, count * ssz);
                    out_off += len;
                }
            }
        }
    }
    if (st) return st;
    /* the input bytes no step read in order (reordered or dropped channels) */
    while (s->in_cursor < t->nbytes) {
        uint64_t len = t->nbytes - s->in_cursor < CHUNK ? t->nbytes - s->in_cursor : CHUNK;
        hash_input_span(s, t, s->in_cursor, len);
        widen_release(s->ckpt, t->offset + s->in_cursor - len, len);
    }
    p->in_hash = s->hasher->hash_digest(s->in_hash);
    p->out_hash = s->hasher->hash_digest(s->out_hash);
    return WIDEN_OK;
}

widen_status widen_execute(const widen_checkpoint *ckpt, widen_plan *plan, const widen_exec_options *opt,
                           widen_sink_fn sink, void *sink_user, widen_error *err)
{
    widen_isa isa = opt->isa == WIDEN_ISA_COUNT ? widen_isa_active() : opt->isa;
    exec_state s = {.ckpt = ckpt, .opt = opt, .kernels = widen_kernels_for(isa),
                    .hasher = widen_kernels_for(widen_isa_active()), .sink = sink, .sink_user = sink_user,
                    .total = plan->data_bytes};
    widen_status st = WIDEN_OK;
    s.pool = widen_pool_new(opt->threads);
    s.buffer = malloc(CHUNK);
    s.in_hash = aligned_alloc(64, 2 * sizeof *s.in_hash);
    s.out_hash = s.in_hash ? s.in_hash + 1 : NULL;
    if (!s.kernels) st = widen_fail(err, WIDEN_EUSAGE, "no kernels for ISA %s", widen_isa_name(isa));
    else if (!s.pool || !s.buffer || !s.in_hash || !s.out_hash) st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < plan->count && !st;) {
        widen_plan_tensor *p = &plan->tensors[i];
        size_t moved = p->op == WIDEN_OP_COPY && !p->strided ? copy_run(&s, plan, i, &st, err) : 0;
        if (moved) {
            i += moved;
            continue;
        }
        /* strided tensors are gathered: here when copied or cast, in remap_tensor when remapped */
        if (!st) st = p->strided && p->axis < 0 ? gather_tensor(&s, i, p, err)
                      : p->op == WIDEN_OP_COPY ? copy_tensor(&s, i, p, err) : remap_tensor(&s, i, p, err);
        i++;
    }
    if (s.pool) widen_pool_free(s.pool);
    free(s.buffer);
    free(s.in_hash);
    return st;
}
