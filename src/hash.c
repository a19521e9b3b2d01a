/* hash.c: XXH3-128 in the canonical form xxhsum -H2 prints, and hashing a whole checkpoint, through
 * the active ISA's hash kernels. */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/kernels.h"
#include "internal.h"

static const widen_kernels *hash_kernels(void)
{
    return widen_kernels_for(widen_isa_active());
}

widen_hash128 widen_hash_bytes(const void *data, size_t len)
{
    if (!data) len = 0; /* the hash of nothing */
    const widen_kernels *k = hash_kernels();
    widen_hash_state state;
    k->hash_reset(&state);
    k->hash_update(&state, data, len);
    return k->hash_digest(&state);
}

void widen_hash128_hex(widen_hash128 hash, char out[33])
{
    static const char digits[] = "0123456789abcdef";
    if (!out) return;
    for (int i = 0; i < 16; i++) {
        uint64_t word = i < 8 ? hash.high : hash.low;
        unsigned byte = (unsigned)(word >> (56 - 8 * (i % 8))) & 0xffu;
        out[2 * i] = digits[byte >> 4];
        out[2 * i + 1] = digits[byte & 15];
    }
    out[32] = '\0';
}

void widen_hash_options_init(widen_hash_options *o, size_t size)
{
    const widen_hash_options defaults = {.size = sizeof defaults};
    widen_options_init(o, size, &defaults, sizeof defaults);
}

enum { HASH_OPTIONS_V1 = offsetof(widen_hash_options, progress_user) + sizeof(void *), STEP = 8u << 20 };

/* A file's hashes on several threads: the file is one stream and each tensor another; workers take
 * streams in order (the file first) and hash them in steps of STEP, releasing the pages behind them.
 * Whichever thread ends a step reports progress, under a lock: never two at once. */
typedef struct hash_run {
    const widen_checkpoint *ckpt;
    const widen_kernels *k;
    widen_mapping file;
    widen_hash128 *file_hash, *tensor_hashes;
    widen_progress_fn progress;
    void *progress_user;
    uint64_t total;
    uint64_t step; /* a cancel stops every worker within its step: 64 MiB in all, whatever the threads */
    int count_tensors; /* 0: a safetensors file, whose tensors are its bytes: progress counts the file alone */
    _Atomic uint64_t done;
    _Atomic size_t next;
    _Atomic int stop; /* 1: interrupted, 2: failed (status in st) */
    pthread_mutex_t report_lock;
    pthread_mutex_t error_lock;
    widen_status st;
    widen_error err;
} hash_run;

static void hash_moved(hash_run *r, uint64_t len)
{
    atomic_fetch_add(&r->done, len);
    if (!r->progress) return;
    pthread_mutex_lock(&r->report_lock); /* what is reported is read under the lock: it never goes back */
    if (!atomic_load(&r->stop) && r->progress(r->progress_user, atomic_load(&r->done), r->total))
        atomic_store(&r->stop, 1);
    pthread_mutex_unlock(&r->report_lock);
}

/* A strided tensor's progress, every 8 MiB gathered: what it moved since its last report counts. */
typedef struct hash_tick_state {
    hash_run *r;
    uint64_t reported;
    uint64_t counted; /* what it counts of the run's progress: the tensor's bytes, or 0 (safetensors) */
} hash_tick_state;

static int hash_tick(void *user, uint64_t done, uint64_t total)
{
    (void)total;
    hash_tick_state *s = user;
    if (done > s->reported) {
        hash_moved(s->r, s->counted ? done - s->reported : 0);
        s->reported = done;
    }
    return atomic_load(&s->r->stop) != 0;
}

static void hash_stream(void *user, size_t part)
{
    (void)part;
    hash_run *r = user;
    widen_hash_state *state = aligned_alloc(64, sizeof *state);
    for (size_t item; state && !atomic_load(&r->stop) && (item = atomic_fetch_add(&r->next, 1)) <= r->ckpt->count;) {
        size_t t = item - 1;
        if (item > 0 && widen_tensor_strided(r->ckpt, t)) {
            widen_error err;
            widen_hash128 h;
            uint64_t bytes = widen_tensor_elements(r->ckpt, t) * widen_dtype_bits(r->ckpt->tensors[t].dtype) / 8;
            hash_tick_state tick = {.r = r, .counted = r->count_tensors};
            widen_status st = widen_tensor_hash_strided(r->ckpt, t, &h, hash_tick, &tick, &err);
            if (st && st != WIDEN_EINTERRUPTED) {
                pthread_mutex_lock(&r->error_lock);
                if (!r->st) r->st = st, r->err = err;
                pthread_mutex_unlock(&r->error_lock);
                atomic_store(&r->stop, 2);
            } else if (!st) {
                if (r->tensor_hashes) r->tensor_hashes[t] = h;
                if (bytes > tick.reported) hash_moved(r, r->count_tensors ? bytes - tick.reported : 0);
            }
            continue;
        }
        const unsigned char *base = item == 0 ? r->file.data : r->ckpt->map + r->ckpt->tensors[t].offset;
        uint64_t len = item == 0 ? r->file.size : r->ckpt->tensors[t].nbytes;
        uint64_t origin = item == 0 ? 0 : r->ckpt->tensors[t].offset;
        r->k->hash_reset(state);
        for (uint64_t off = 0; off < len && !atomic_load(&r->stop); off += r->step) {
            uint64_t n = len - off < r->step ? len - off : r->step;
            r->k->hash_update(state, base + off, (size_t)n);
            if (item == 0) widen_mapping_release(&r->file, off, n);
            else widen_release(r->ckpt, origin + off, n);
            hash_moved(r, item == 0 || r->count_tensors ? n : 0);
        }
        if (item == 0 && r->file_hash) *r->file_hash = r->k->hash_digest(state);
        else if (item > 0 && r->tensor_hashes) r->tensor_hashes[t] = r->k->hash_digest(state);
    }
    if (!state) {
        pthread_mutex_lock(&r->error_lock);
        if (!r->st) r->st = widen_fail(&r->err, WIDEN_EIO, "out of memory");
        pthread_mutex_unlock(&r->error_lock);
        atomic_store(&r->stop, 2);
    }
    free(state);
}

static widen_status hash_parallel(widen_checkpoint *ckpt, widen_hash128 *file_hash, widen_hash128 *tensor_hashes,
                                  const widen_hash_options *o, unsigned threads, uint64_t total, widen_error *err)
{
    hash_run r = {.ckpt = ckpt, .k = hash_kernels(), .file = widen_checkpoint_file(ckpt), .file_hash = file_hash,
                  .tensor_hashes = tensor_hashes, .progress = o->progress, .progress_user = o->progress_user,
                  .total = total, .step = threads > 8 ? (64u << 20) / threads : STEP,
                  .count_tensors = strcmp(ckpt->format, "safetensors") != 0};
    pthread_mutex_init(&r.report_lock, NULL);
    pthread_mutex_init(&r.error_lock, NULL);
    widen_pool *pool = widen_pool_new(threads);
    widen_status st = WIDEN_OK;
    if (!pool) st = widen_fail(err, WIDEN_EIO, "out of memory");
    else widen_pool_run(pool, widen_pool_threads(pool), hash_stream, &r);
    widen_pool_free(pool);
    if (!st && r.st) {
        st = r.st;
        if (err) *err = r.err;
    } else if (!st && atomic_load(&r.stop)) {
        st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
    } else if (!st && r.progress && r.progress(r.progress_user, total, total)) {
        st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path); /* the last step's report */
    }
    pthread_mutex_destroy(&r.report_lock);
    pthread_mutex_destroy(&r.error_lock);
    return st;
}

/* One thread: a safetensors file's tensors are contiguous and in file order, so one sequential walk
 * feeds both the file state and the state of the tensor that owns each byte. Other formats: the file,
 * then each tensor, from where it lies (an .npz's deflated arrays were inflated out of the file). */
widen_status widen_hash_checkpoint(widen_checkpoint *ckpt, widen_hash128 *file_hash,
                                   widen_hash128 *tensor_hashes, const widen_hash_options *options,
                                   widen_error *err)
{
    widen_hash_options o;
    widen_hash_options_init(&o, sizeof o);
    if (!ckpt) return widen_fail(err, WIDEN_EUSAGE, "widen_hash_checkpoint needs a checkpoint");
    widen_status st = widen_options_read(&o, sizeof o, HASH_OPTIONS_V1, options, "widen_hash_options", err);
    if (st || (st = widen_isa_init(err))) return st;
    if ((st = widen_checkpoint_check_work(ckpt, err))) return st; /* every name is hashed: views count each time */
    int ordered = strcmp(ckpt->format, "safetensors") == 0;
    widen_mapping input = widen_checkpoint_file(ckpt);
    uint64_t total = input.size;
    for (size_t t = 0; t < ckpt->count && !ordered; t++)
        total += widen_tensor_strided(ckpt, t) ? widen_tensor_elements(ckpt, t) * widen_dtype_bits(ckpt->tensors[t].dtype) / 8
                                               : ckpt->tensors[t].nbytes;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = o.threads ? o.threads : (unsigned)(cpus > 0 ? cpus : 1);
    if (threads > ckpt->count + 1) threads = (unsigned)ckpt->count + 1;
    if (threads > 1) return hash_parallel(ckpt, file_hash, tensor_hashes, &o, threads, total, err);
    const widen_kernels *k = hash_kernels();
    widen_hash_state *file = aligned_alloc(64, 2 * sizeof *file), *tensor = file + 1;
    if (!file) return widen_fail(err, WIDEN_EIO, "out of memory");
    k->hash_reset(file);
    uint64_t pos = 0, size = ckpt->size, done = 0;
    size_t t = 0;
    if (!ordered) {
        for (size = input.size; pos < size && !st; pos += STEP) {
            uint64_t len = size - pos < STEP ? size - pos : STEP;
            k->hash_update(file, input.data + pos, (size_t)len);
            widen_mapping_release(&input, pos, len);
            if (o.progress && o.progress(o.progress_user, done += len, total))
                st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
        }
        widen_meter meter = {.fn = o.progress, .user = o.progress_user, .total = total, .base = done};
        for (; t < ckpt->count && !st; t++) {
            widen_hash128 h;
            widen_meter_next(&meter, widen_tensor_strided(ckpt, t) ? widen_tensor_elements(ckpt, t) *
                             widen_dtype_bits(ckpt->tensors[t].dtype) / 8 : ckpt->tensors[t].nbytes);
            if (!(st = widen_tensor_hash(ckpt, t, &h, o.progress ? widen_meter_progress : NULL, &meter, err)) &&
                tensor_hashes)
                tensor_hashes[t] = h;
        }
        pos = size;
    }
    while (!st && (pos < size || t < ckpt->count)) {
        /* the next boundary: the end of the current tensor or of the step */
        uint64_t end = pos + STEP < size ? pos + STEP : size;
        const widen_tensor_info *cur = t < ckpt->count ? &ckpt->tensors[t] : NULL;
        if (cur && pos < cur->offset && end > cur->offset) end = cur->offset;
        if (cur && pos >= cur->offset && end > cur->offset + cur->nbytes) end = cur->offset + cur->nbytes;
        if (cur && pos == cur->offset) k->hash_reset(tensor);
        k->hash_update(file, ckpt->map + pos, (size_t)(end - pos));
        if (cur && pos >= cur->offset) k->hash_update(tensor, ckpt->map + pos, (size_t)(end - pos));
        widen_release(ckpt, pos, end - pos);
        pos = end;
        if (cur && pos == cur->offset + cur->nbytes) {
            if (tensor_hashes) tensor_hashes[t] = k->hash_digest(tensor);
            t++;
        }
        /* every STEP bytes, however many tensors they hold, and at the end */
        if (o.progress && (pos - done >= STEP || (pos == size && t == ckpt->count))) {
            done = pos;
            if (o.progress(o.progress_user, pos, size)) st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
        }
    }
    if (!st && file_hash) *file_hash = k->hash_digest(file);
    free(file);
    return st;
}

widen_status widen_tensor_hash(const widen_checkpoint *ckpt, size_t index, widen_hash128 *out, widen_progress_fn progress,
                               void *progress_user, widen_error *err)
{
    if (widen_tensor_strided(ckpt, index))
        return widen_tensor_hash_strided(ckpt, index, out, progress, progress_user, err);
    const widen_kernels *k = hash_kernels();
    widen_hash_state *state = aligned_alloc(64, sizeof *state);
    if (!state) return widen_fail(err, WIDEN_EIO, "out of memory");
    const widen_tensor_info *t = &ckpt->tensors[index];
    widen_status st = WIDEN_OK;
    k->hash_reset(state);
    for (uint64_t off = 0; off < t->nbytes && !st; off += STEP) {
        uint64_t len = t->nbytes - off < STEP ? t->nbytes - off : STEP;
        k->hash_update(state, ckpt->map + t->offset + off, (size_t)len);
        widen_release(ckpt, t->offset + off, len);
        if (progress && progress(progress_user, off + len, t->nbytes))
            st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
    }
    if (!st && progress && t->nbytes == 0 && progress(progress_user, 0, 0))
        st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
    if (!st) *out = k->hash_digest(state);
    free(state);
    return st;
}
