/* hash.c: XXH3-128 in the canonical form xxhsum -H2 prints, and hashing a whole checkpoint, through
 * the active ISA's hash kernels. */
#include <stdlib.h>
#include <string.h>

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

/* Tensors are contiguous and in file order, so one sequential walk feeds both the file state and
 * the state of the tensor that owns each byte. */
widen_status widen_hash_checkpoint(widen_checkpoint *ckpt, widen_hash128 *file_hash,
                                   widen_hash128 *tensor_hashes, widen_progress_fn progress,
                                   void *progress_user, widen_error *err)
{
    enum { STEP = 8u << 20 };
    if (!ckpt) return widen_fail(err, WIDEN_EUSAGE, "widen_hash_checkpoint needs a checkpoint");
    widen_status st0 = widen_checkpoint_check_work(ckpt, err); /* every name is hashed: views count each time */
    if (st0) return st0;
    const widen_kernels *k = hash_kernels();
    widen_hash_state *file = aligned_alloc(64, 2 * sizeof *file), *tensor = file + 1;
    if (!file) return widen_fail(err, WIDEN_EIO, "out of memory");
    k->hash_reset(file);
    widen_status st = WIDEN_OK;
    uint64_t pos = 0, size = ckpt->size;
    size_t t = 0;
    if (strcmp(ckpt->format, "safetensors") != 0) {
        /* tensors may share storages and come in any order: the file first, then each tensor (from
         * where they lie: an .npz's deflated arrays were inflated out of the file) */
        widen_mapping input = widen_checkpoint_file(ckpt);
        for (size = input.size; pos < size && !st; pos += STEP) {
            uint64_t len = size - pos < STEP ? size - pos : STEP;
            k->hash_update(file, input.data + pos, (size_t)len);
            widen_mapping_release(&input, pos, len);
            if (progress && progress(progress_user, pos + len, size))
                st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
        }
        for (; t < ckpt->count && !st; t++) {
            const widen_tensor_info *cur = &ckpt->tensors[t];
            if (widen_tensor_strided(ckpt, t)) {
                widen_hash128 h;
                if (!(st = widen_tensor_hash_strided(ckpt, t, &h, err)) && tensor_hashes) tensor_hashes[t] = h;
                continue;
            }
            k->hash_reset(tensor);
            for (uint64_t off = 0; off < cur->nbytes; off += STEP) {
                uint64_t len = cur->nbytes - off < STEP ? cur->nbytes - off : STEP;
                k->hash_update(tensor, ckpt->map + cur->offset + off, (size_t)len);
                widen_release(ckpt, cur->offset + off, len);
            }
            if (tensor_hashes) tensor_hashes[t] = k->hash_digest(tensor);
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
            continue;
        }
        if (progress && progress(progress_user, pos, size)) {
            st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
            break;
        }
    }
    if (!st && file_hash) *file_hash = k->hash_digest(file);
    free(file);
    return st;
}

widen_status widen_tensor_hash(const widen_checkpoint *ckpt, size_t index, widen_hash128 *out, widen_error *err)
{
    if (widen_tensor_strided(ckpt, index)) return widen_tensor_hash_strided(ckpt, index, out, err);
    enum { STEP = 8u << 20 };
    const widen_kernels *k = hash_kernels();
    widen_hash_state *state = aligned_alloc(64, sizeof *state);
    if (!state) return widen_fail(err, WIDEN_EIO, "out of memory");
    const widen_tensor_info *t = &ckpt->tensors[index];
    k->hash_reset(state);
    for (uint64_t off = 0; off < t->nbytes; off += STEP) {
        uint64_t len = t->nbytes - off < STEP ? t->nbytes - off : STEP;
        k->hash_update(state, ckpt->map + t->offset + off, (size_t)len);
        widen_release(ckpt, t->offset + off, len);
    }
    *out = k->hash_digest(state);
    free(state);
    return WIDEN_OK;
}
