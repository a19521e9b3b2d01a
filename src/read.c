/* read.c: one tensor's elements for a program that reads them: a view into the mapping where its
 * bytes already are its row-major little-endian elements, else a copy gathered into order. */
#include <string.h>

#include "internal.h"

/* Bytes of tensor `index`'s elements in row-major order (what widen_tensor_read writes). */
static uint64_t element_bytes(const widen_checkpoint *c, size_t index)
{
    const widen_tensor_info *t = &c->tensors[index];
    if (!widen_tensor_strided(c, index)) return t->nbytes;
    return widen_tensor_elements(c, index) * (widen_dtype_bits(t->dtype) / 8);
}

widen_status widen_tensor_data(const widen_checkpoint *c, size_t index, const void **data, uint64_t *nbytes,
                               widen_error *err)
{
    if (data) *data = NULL;
    if (nbytes) *nbytes = 0;
    if (!c || !data || !nbytes) return widen_fail(err, WIDEN_EUSAGE, "widen_tensor_data: a NULL argument");
    if (index >= c->count)
        return widen_fail(err, WIDEN_EUSAGE, "%s: no tensor %zu (the file has %zu)", c->path, index, c->count);
    const widen_tensor_info *t = &c->tensors[index];
    if (widen_tensor_strided(c, index))
        return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' is not stored as contiguous little-endian row-major "
                          "bytes (a strided view, or a Fortran-order or big-endian array): read it with "
                          "widen_tensor_read", c->path, t->name);
    *data = c->map + t->offset;
    *nbytes = t->nbytes;
    return WIDEN_OK;
}

widen_status widen_tensor_read(const widen_checkpoint *c, size_t index, void *out, uint64_t size, widen_error *err)
{
    if (!c || (!out && size)) return widen_fail(err, WIDEN_EUSAGE, "widen_tensor_read: a NULL argument");
    if (index >= c->count)
        return widen_fail(err, WIDEN_EUSAGE, "%s: no tensor %zu (the file has %zu)", c->path, index, c->count);
    const widen_tensor_info *t = &c->tensors[index];
    uint64_t need = element_bytes(c, index);
    if (size != need)
        return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' has %llu bytes of elements, not %llu", c->path, t->name,
                          (unsigned long long)need, (unsigned long long)size);
    if (!need) return WIDEN_OK;
    if (!widen_tensor_strided(c, index)) {
        memcpy(out, c->map + t->offset, (size_t)need);
    } else {
        unsigned esize = widen_dtype_bits(t->dtype) / 8;
        widen_tensor_gather(c, index, 0, need / esize, out);
    }
    /* as the data path does, what was read leaves this process (a view's pages fault back in) */
    widen_release(c, t->offset, widen_tensor_strided(c, index) ? widen_tensor_span(c, index) : need);
    return WIDEN_OK;
}
