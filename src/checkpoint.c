/* checkpoint.c: opening a checkpoint read-only, telling formats apart, and the tensor list. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static const unsigned char torch_legacy_magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                                   0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

/* Names the formats widen recognises but does not read yet; NULL for anything else. */
static const char *unsupported_kind(const unsigned char *p, uint64_t size)
{
    if (size >= sizeof torch_legacy_magic && memcmp(p, torch_legacy_magic, sizeof torch_legacy_magic) == 0)
        return "a legacy (pre-1.6, non-zip) PyTorch checkpoint, which widen does not read: re-save it with a "
               "current torch.save";
    if (size >= 8 && memcmp(p, "PYTORCH1", 8) == 0)
        return "a TorchScript/PYTORCH1 file, which widen does not read";
    if (size >= 6 && memcmp(p, "\x93NUMPY", 6) == 0)
        return "a NumPy .npy file, which this version of widen does not read yet";
    /* a safetensors header length ending in 0x7b or 0x5b has zero high bytes; JSON text does not */
    if (size >= 1 && (p[0] == '{' || p[0] == '[') && (size < 8 || memcmp(p + 1, "\0\0\0\0\0\0\0", 7) != 0))
        return "a JSON file (a sharded checkpoint's .safetensors.index.json?), which this version of widen does not "
               "read yet";
    return NULL;
}

widen_status widen_open(const char *path, widen_checkpoint **out, widen_error *err)
{
    *out = NULL;
    widen_checkpoint *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    c->fd = -1;
    widen_status st;
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (c->fd < 0) {
        st = widen_fail(err, WIDEN_EIO,
                        "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(c->fd, &sb) != 0) {
        st = widen_fail(err, WIDEN_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = widen_fail(err, WIDEN_EFORMAT, "%s: not a regular file", path);
        goto fail;
    }
    c->size = (uint64_t)sb.st_size;
    if (c->size > 0) {
        void *m = mmap(NULL, (size_t)c->size, PROT_READ, MAP_SHARED, c->fd, 0);
        if (m == MAP_FAILED) {
            st = widen_fail(err, WIDEN_EIO, "%s: cannot map: %s", path, strerror(errno));
            goto fail;
        }
        c->map = m;
        /* headers first, read here and there (a zip's local headers lie all over the file): no
         * read-around, so that only the pages read are mapped */
        madvise(m, (size_t)c->size, MADV_RANDOM);
    }
    const char *kind = unsupported_kind(c->map, c->size);
    if (kind) {
        st = widen_fail(err, WIDEN_EFORMAT, "%s: this is %s", path, kind);
        goto fail;
    }
    if (c->size >= 4 && memcmp(c->map, "PK\x03\x04", 4) == 0) {
        c->format = "pt";
        st = widen_torch_read(c, err);
    } else {
        c->format = "safetensors";
        st = widen_safetensors_read(c, err);
    }
    if (st) goto fail;
    widen_release(c, 0, c->size); /* the pages reading the headers touched */
    if (c->map) madvise((void *)c->map, (size_t)c->size, MADV_SEQUENTIAL); /* then the data, front to back */
    *out = c;
    return WIDEN_OK;
fail:
    widen_close(c);
    return st;
}

void widen_close(widen_checkpoint *c)
{
    if (!c) return;
    if (c->format_free) c->format_free(c->format_state);
    if (c->map) munmap((void *)c->map, (size_t)c->size);
    if (c->fd >= 0) close(c->fd);
    for (size_t i = 0; i < c->count; i++) free(c->names[i]);
    free(c->names);
    free(c->tensors);
    for (size_t i = 0; i < c->metadata_count; i++) {
        free(c->metadata[i].key);
        free(c->metadata[i].value);
    }
    free(c->metadata);
    free(c->path);
    free(c);
}

void widen_release(const widen_checkpoint *c, uint64_t offset, uint64_t len)
{
    if (c->fd < 0) return; /* not a mapping of ours (a buffer handed in by a fuzzer) */
    /* From the start of the 2 MiB block holding `offset`: a fault maps more than the page it hits
     * (fault-around windows, large folios, all inside that block), so reading the start of one item
     * maps the end of the item before it, which that item's release has already passed. */
    const uint64_t block = 2u << 20;
    uint64_t begin = offset / block * block, end = offset + len;
    if (end > c->size) end = c->size;
    if (end > begin) madvise((void *)(c->map + begin), (size_t)(end - begin), MADV_DONTNEED);
}

const char *widen_checkpoint_path(const widen_checkpoint *c) { return c->path; }
int widen_checkpoint_fd(const widen_checkpoint *c) { return c->fd; }
const char *widen_checkpoint_format(const widen_checkpoint *c) { return c->format; }
uint64_t widen_checkpoint_size(const widen_checkpoint *c) { return c->size; }
size_t widen_tensor_count(const widen_checkpoint *c) { return c->count; }

const widen_tensor_info *widen_tensor_at(const widen_checkpoint *c, size_t index)
{
    return index < c->count ? &c->tensors[index] : NULL;
}

long widen_tensor_find(const widen_checkpoint *c, const char *name)
{
    for (size_t i = 0; i < c->count; i++)
        if (strcmp(c->tensors[i].name, name) == 0) return (long)i;
    return -1;
}

size_t widen_metadata_count(const widen_checkpoint *c) { return c->metadata_count; }

void widen_metadata_at(const widen_checkpoint *c, size_t index, const char **key, const char **value)
{
    *key = index < c->metadata_count ? c->metadata[index].key : NULL;
    *value = index < c->metadata_count ? c->metadata[index].value : NULL;
}

size_t widen_find_candidates(const widen_checkpoint *c, int axis, uint64_t from, size_t *indices,
                             size_t max)
{
    size_t found = 0;
    for (size_t i = 0; i < c->count; i++) {
        const widen_tensor_info *t = &c->tensors[i];
        if (!widen_dtype_is_float(t->dtype) || t->rank < 3) continue;
        int a = axis < 0 ? axis + t->rank : axis;
        if (a < 0 || a >= t->rank || t->shape[a] != from) continue;
        if (found < max) indices[found] = i;
        found++;
    }
    return found;
}
