/* execute.c: the data path: every output tensor, in bounded chunks, through the kernels and a hash,
 * into a sink (a file for apply, a comparison for verify): in order, or side by side into a file
 * written at offsets. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>

#include "../kernels/kernels.h"
#include "internal.h"

enum { CHUNK = 4u << 20 }; /* output bytes produced per step */

/* What the threads of one run share: progress, the stop flag, the first failure, the parallel
 * phase's work list. */
typedef struct exec_run {
    widen_plan *plan;
    uint64_t total;
    _Atomic uint64_t done;
    _Atomic int stop; /* the progress callback said stop, or a worker failed */
    pthread_mutex_t report_lock; /* never two threads in the progress callback */
    pthread_mutex_t error_lock;
    widen_status st; /* a worker's failure: the first, or a real one over an interruption */
    widen_error err;
    struct exec_item *items; /* the parallel phase: runs of tensors, largest first */
    size_t item_count;
    _Atomic size_t next;
    const struct exec_state *model; /* what each worker's state starts as */
    void *sink_user;                /* whose lanes the workers take */
} exec_run;

/* One thread's state: its buffer, its hash states, its lane of the sink. */
typedef struct exec_state {
    exec_run *run;
    const widen_checkpoint *ckpt;
    const widen_exec_options *opt;
    const widen_kernels *kernels; /* remaps */
    const widen_kernels *hasher;  /* hashes: the active ISA's, whatever the remap ISA */
    widen_pool *pool; /* NULL on a worker of the parallel phase: its kernels run on its own thread */
    unsigned char *buffer;
    widen_hash_state *in_hash, *out_hash;
    uint64_t in_cursor; /* input bytes of the current tensor hashed so far, in order */
    widen_sink_fn sink;
    void *sink_user;
    int no_copy; /* the sink's copy said it cannot copy here (another filesystem): stop asking */
} exec_state;

/* Counts `len` more output bytes as done and reports the run's progress; nonzero once the run is
 * to stop. What is reported is read under the lock, so it never goes back. */
static int advance(exec_state *s, uint64_t len)
{
    exec_run *r = s->run;
    atomic_fetch_add(&r->done, len);
    if (s->opt->progress) {
        pthread_mutex_lock(&r->report_lock);
        if (!atomic_load(&r->stop) && s->opt->progress(s->opt->progress_user, atomic_load(&r->done), r->total))
            atomic_store(&r->stop, 1);
        pthread_mutex_unlock(&r->report_lock);
    }
    return atomic_load(&r->stop);
}

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
    return advance(s, len) ? widen_fail(err, WIDEN_EINTERRUPTED, "interrupted") : WIDEN_OK;
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
    unsigned threads = s->pool ? widen_pool_threads(s->pool) : 1;
    split_job sj = {.kernels = s->kernels, .job = *job, .parts = 1, .by_rows = job->rows >= threads};
    if (threads > 1 && out_bytes >= (256u << 10)) sj.parts = threads;
    if (sj.parts == 1) run_part(&sj, 0);
    else widen_pool_run(s->pool, sj.parts, run_part, &sj);
}

/* Untouched bytes are moved by the sink's copy where it has one (the kernel copies page cache to
 * page cache) while a second thread hashes them from the mapping, and computes their CRC-32 when the
 * sink wants it: one read of each byte, in blocks small enough to stay in cache between the two. */
enum { BLOCK = 256u << 10, COPY_MIN = 1u << 20, COPY_UNREAD_MIN = 4u << 10 };

static void hash_copied(exec_state *s, widen_plan_tensor *p, uint32_t *crc)
{
    const widen_tensor_info *t = p->in;
    s->hasher->hash_reset(s->out_hash);
    for (uint64_t off = 0; off < t->nbytes && !atomic_load(&s->run->stop); off += CHUNK) {
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
 * show as one jump (the progress callback is then called from the copying thread). A stop stops the
 * hashing too, within a step. */
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
            else if (!j->st && advance(s, len))
                j->st = widen_fail(&j->err, WIDEN_EINTERRUPTED, "interrupted");
        }
        return;
    }
    for (size_t i = j->first; i <= j->last; i++) hash_copied(j->s, &j->plan->tensors[i], j->s->opt->copied ? &j->crc : NULL);
}

static int untouched(const widen_plan_tensor *p)
{
    return p->op == WIDEN_OP_COPY && !p->strided;
}

/* The last of the untouched tensors from `first` (untouched) on, before `end`, that lie back to back
 * in the input as in the output; their bytes in `*bytes`. */
static size_t untouched_run(const widen_plan *plan, size_t first, size_t end, uint64_t *bytes)
{
    size_t last = first;
    *bytes = plan->tensors[first].in->nbytes;
    while (last + 1 < end && untouched(&plan->tensors[last + 1]) &&
           plan->tensors[last + 1].in->offset == plan->tensors[last].in->offset + plan->tensors[last].in->nbytes)
        *bytes += plan->tensors[++last].in->nbytes;
    return last;
}

/* Untouched tensors from `first` on (before `end`) that lie back to back in the input as in the
 * output move in one copy (the kernel copies a long run far faster than many short ones); returns how
 * many did, 0 if the sink has no copy here. */
static size_t copy_run(exec_state *s, widen_plan *plan, size_t first, size_t end, widen_status *st, widen_error *err)
{
    if (!s->opt->copy || s->no_copy) return 0;
    uint64_t bytes;
    size_t last = untouched_run(plan, first, s->opt->copy_one_item ? first + 1 : end, &bytes);
    copy_job job = {.s = s, .plan = plan, .first = first, .last = last, .bytes = bytes};
    const widen_plan_tensor *only = first == last ? &plan->tensors[first] : NULL;
    int crc_known = only && only->crc_known;
    /* the bytes are read only to be hashed, or for a CRC-32 the sink needs and nothing gives */
    int read = !s->opt->unhashed_copies || (s->opt->copied && !crc_known);
    /* short runs go through the sink, buffered: a system call and two threads' handover per record of
     * a few bytes would cost far more than the bytes. Unread, a run of a few pages costs one system
     * call where reading it would cost a page fault per page and a copy. */
    if (bytes < (read ? COPY_MIN : COPY_UNREAD_MIN)) return 0;
    if (read && s->pool && widen_pool_threads(s->pool) > 1) {
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
    if (!*st && atomic_load(&s->run->stop)) *st = widen_fail(err, WIDEN_EINTERRUPTED, "interrupted"); /* the hashing stopped */
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

/* Tensors [begin, end) of the plan, in order, on this state's thread (and its pool). */
static widen_status run_tensors(exec_state *s, widen_plan *plan, size_t begin, size_t end, widen_error *err)
{
    widen_status st = WIDEN_OK;
    for (size_t i = begin; i < end && !st;) {
        widen_plan_tensor *p = &plan->tensors[i];
        size_t moved = untouched(p) ? copy_run(s, plan, i, end, &st, err) : 0;
        if (moved) {
            i += moved;
            continue;
        }
        /* strided tensors are gathered: here when copied or cast, in remap_tensor when remapped */
        if (!st) st = p->strided && p->axis < 0 ? gather_tensor(s, i, p, err)
                      : p->op == WIDEN_OP_COPY ? copy_tensor(s, i, p, err) : remap_tensor(s, i, p, err);
        i++;
    }
    return st;
}

static widen_status state_open(exec_state *s, widen_error *err)
{
    s->buffer = widen_buffer_alloc(CHUNK);
    s->in_hash = aligned_alloc(64, 2 * sizeof *s->in_hash);
    s->out_hash = s->in_hash ? s->in_hash + 1 : NULL;
    return s->buffer && s->in_hash ? WIDEN_OK : widen_fail(err, WIDEN_EIO, "out of memory");
}

static void state_close(exec_state *s)
{
    widen_buffer_free(s->buffer, CHUNK);
    free(s->in_hash);
}

/* The parallel phase's unit of work: plan tensors [first, last] (small ones gathered until they
 * make a step, so that a million tiny tensors are not a million hand-overs), taken whole by one
 * worker. */
typedef struct exec_item {
    size_t first, last;
    uint64_t bytes;
} exec_item;

static int larger_first(const void *a, const void *b)
{
    const exec_item *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
    return x->first < y->first ? -1 : x->first > y->first;
}

static void worker_failed(exec_run *r, widen_status st, const widen_error *err)
{
    pthread_mutex_lock(&r->error_lock);
    if (!r->st || (r->st == WIDEN_EINTERRUPTED && st != WIDEN_EINTERRUPTED)) {
        r->st = st;
        r->err = *err;
    }
    pthread_mutex_unlock(&r->error_lock);
    atomic_store(&r->stop, 1);
}

/* A worker of the parallel phase: its own buffer, hash states and lane; items until none are left
 * or the run stops. */
static void exec_worker(void *user, size_t lane)
{
    exec_run *r = user;
    exec_state s = *r->model;
    s.pool = NULL;
    s.sink_user = s.opt->lane(r->sink_user, (unsigned)lane);
    widen_error err;
    widen_status st = state_open(&s, &err);
    for (size_t n; !st && !atomic_load(&r->stop) && (n = atomic_fetch_add(&r->next, 1)) < r->item_count;) {
        st = run_tensors(&s, r->plan, r->items[n].first, r->items[n].last + 1, &err);
        /* the block its input ends in, which a release leaves to the next tensor's: that one may
         * be done already, or be another worker's */
        const widen_tensor_info *in = r->plan->tensors[r->items[n].last].in;
        uint64_t end = in->offset + in->nbytes;
        if (in->nbytes) widen_release(s.ckpt, (end - 1) / WIDEN_RELEASE_BLOCK * WIDEN_RELEASE_BLOCK, WIDEN_RELEASE_BLOCK);
    }
    if (st) worker_failed(r, st, &err);
    state_close(&s);
}

/* The last tensor of the unit that starts at `first`: where untouched runs are moved unread (cloned
 * where the file system clones), a run of untouched tensors back to back in the input and of at
 * least COPY_MIN bytes is one unit, moved in one copy_run, so that the small tensors inside it are
 * cloned with it rather than written and its blocks are not cut at every tensor; otherwise the
 * tensor alone (the runs' bytes are read to be hashed, and many workers hash them faster). */
static size_t unit_end(const exec_state *s, const widen_plan *plan, size_t first, uint64_t *bytes)
{
    *bytes = plan->tensors[first].nbytes;
    if (!s->opt->unhashed_copies || s->opt->copied || !s->opt->copy || !untouched(&plan->tensors[first])) return first;
    uint64_t run;
    size_t last = untouched_run(plan, first, plan->count, &run);
    if (run < COPY_MIN) return first;
    *bytes = run;
    return last;
}

/* Units (unit_end) over a thread's share of the output first, in order, each split across the pool;
 * then the rest as items on `threads` workers, the largest first. */
static widen_status run_parallel(exec_state *s, widen_plan *plan, widen_error *err)
{
    exec_run *r = s->run;
    unsigned threads = widen_pool_threads(s->pool);
    uint64_t share = plan->data_bytes / threads, n;
    widen_status st = WIDEN_OK;
    for (size_t i = 0, last; i < plan->count && !st; i = last + 1)
        if ((last = unit_end(s, plan, i, &n)), n > share) st = run_tensors(s, plan, i, last + 1, err);
    if (st) return st;
    if (!(r->items = malloc((plan->count ? plan->count : 1) * sizeof *r->items)))
        return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0, last; i < plan->count; i = last + 1) {
        last = unit_end(s, plan, i, &n);
        exec_item *open = r->item_count ? &r->items[r->item_count - 1] : NULL;
        if (n > share) continue;
        if (open && open->last + 1 == i && open->bytes < CHUNK && n < CHUNK) open->last = last, open->bytes += n;
        else r->items[r->item_count++] = (exec_item){.first = i, .last = last, .bytes = n};
    }
    qsort(r->items, r->item_count, sizeof *r->items, larger_first);
    r->model = s;
    widen_pool_run(s->pool, r->item_count < threads ? r->item_count : threads, exec_worker, r);
    if (r->st) {
        if (err) *err = r->err;
        return r->st;
    }
    return WIDEN_OK;
}

widen_status widen_execute(const widen_checkpoint *ckpt, widen_plan *plan, const widen_exec_options *opt,
                           widen_sink_fn sink, void *sink_user, widen_error *err)
{
    widen_isa isa = opt->isa == WIDEN_ISA_COUNT ? widen_isa_active() : opt->isa;
    exec_run run = {.plan = plan, .total = plan->data_bytes, .sink_user = sink_user};
    exec_state s = {.run = &run, .ckpt = ckpt, .opt = opt, .kernels = widen_kernels_for(isa),
                    .hasher = widen_kernels_for(widen_isa_active()), .sink = sink,
                    .sink_user = opt->lane ? opt->lane(sink_user, 0) : sink_user};
    pthread_mutex_init(&run.report_lock, NULL);
    pthread_mutex_init(&run.error_lock, NULL);
    widen_status st = state_open(&s, err);
    s.pool = widen_pool_new(opt->threads);
    if (!s.kernels) st = widen_fail(err, WIDEN_EUSAGE, "no kernels for ISA %s", widen_isa_name(isa));
    else if (!st && !s.pool) st = widen_fail(err, WIDEN_EIO, "out of memory");
    if (!st && opt->lane && widen_pool_threads(s.pool) > 1) {
        st = run_parallel(&s, plan, err);
    } else if (!st) {
        st = run_tensors(&s, plan, 0, plan->count, err);
    }
    /* a stop that reached a thread between its steps (its hashing of a copied run, its next item) */
    if (!st && atomic_load(&run.stop)) st = widen_fail(err, WIDEN_EINTERRUPTED, "interrupted");
    if (s.pool) widen_pool_free(s.pool);
    state_close(&s);
    free(run.items);
    pthread_mutex_destroy(&run.report_lock);
    pthread_mutex_destroy(&run.error_lock);
    return st;
}
