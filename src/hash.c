/* hash.c: XXH3-128 in the canonical form xxhsum -H2 prints, and hashing a whole checkpoint. */
#include <stdlib.h>

#include "internal.h"

static widen_hash128 from_xxh(XXH128_hash_t h)
{
    return (widen_hash128){.high = h.high64, .low = h.low64};
}

widen_hash128 widen_hash_digest(XXH3_state_t *state)
{
    return from_xxh(XXH3_128bits_digest(state));
}

widen_hash128 widen_hash_bytes(const void *data, size_t len)
{
    return from_xxh(XXH3_128bits(data, len));
}

void widen_hash128_hex(widen_hash128 hash, char out[33])
{
    static const char digits[] = "0123456789abcdef";
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
    XXH3_state_t *file = XXH3_createState(), *tensor = XXH3_createState();
    if (!file || !tensor) {
        XXH3_freeState(file);
        XXH3_freeState(tensor);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    XXH3_128bits_reset(file);
    widen_status st = WIDEN_OK;
    uint64_t pos = 0, size = ckpt->size;
    size_t t = 0;
    while (pos < size || t < ckpt->count) {
        /* the next boundary: the end of the current tensor or of the step */
        uint64_t end = pos + STEP < size ? pos + STEP : size;
        const widen_tensor_info *cur = t < ckpt->count ? &ckpt->tensors[t] : NULL;
        if (cur && pos < cur->offset && end > cur->offset) end = cur->offset;
        if (cur && pos >= cur->offset && end > cur->offset + cur->nbytes) end = cur->offset + cur->nbytes;
        if (cur && pos == cur->offset) XXH3_128bits_reset(tensor);
        XXH3_128bits_update(file, ckpt->map + pos, (size_t)(end - pos));
        if (cur && pos >= cur->offset) XXH3_128bits_update(tensor, ckpt->map + pos, (size_t)(end - pos));
        widen_release(ckpt, pos, end - pos);
        pos = end;
        if (cur && pos == cur->offset + cur->nbytes) {
            if (tensor_hashes) tensor_hashes[t] = widen_hash_digest(tensor);
            t++;
            continue;
        }
        if (progress && progress(progress_user, pos, size)) {
            st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", ckpt->path);
            break;
        }
    }
    if (!st && file_hash) *file_hash = widen_hash_digest(file);
    XXH3_freeState(file);
    XXH3_freeState(tensor);
    return st;
}
