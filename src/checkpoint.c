/* checkpoint.c: opening a checkpoint read-only, telling formats apart, and the tensor list. */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "format/npy.h"
#include "format/torch.h"

/* The LONG1 that begins a legacy torch.save file: torch's magic number 0x1950a86a20f9469cfc6c. */
static const unsigned char legacy_magic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

/* Names the files widen recognises but does not read; NULL for anything else. */
/* A safetensors file whose header length's low bytes happen to read as something else (0x280 bytes
 * of header start the file with 80 02, as a pickle does): the length fits and JSON follows. */
static int plausible_safetensors(const unsigned char *p, uint64_t size)
{
    if (size < 9) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | p[i];
    return n <= size - 8 && (p[8] == '{' || p[8] == ' ' || p[8] == '\t' || p[8] == '\n' || p[8] == '\r');
}

/* A legacy torch.save file: a pickle whose first value is torch's magic number (after PROTO, of any
 * number, as torch's unpickler accepts it, and from protocol 4 on a FRAME). */
static int legacy_torch(const unsigned char *p, uint64_t size)
{
    if (size < 2 || p[0] != 0x80) return 0;
    /* protocols 4 and 5 start with a FRAME (0x95 and an 8-byte length) before the magic */
    size_t at = size >= 11 && p[2] == 0x95 ? 11 : 2;
    return size >= at + sizeof legacy_magic && memcmp(p + at, legacy_magic, sizeof legacy_magic) == 0;
}

static const char *unsupported_kind(const unsigned char *p, uint64_t size, char *buf, size_t bufsize)
{
    if (size >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5 && !plausible_safetensors(p, size) && !legacy_torch(p, size)) {
        snprintf(buf, bufsize, "a raw pickle (protocol %u), not a PyTorch checkpoint", p[1]);
        return buf;
    }
    if (size >= 27 && memcmp(p, "L119547037146038801333356L\n", 27) == 0)
        return "a legacy (pre-1.6, non-zip) PyTorch checkpoint written with pickle protocol 0 or 1, which widen does "
               "not read: re-save it with a current torch.save";
    if (size >= 8 && memcmp(p, "PYTORCH1", 8) == 0)
        return "a TorchScript file of the pre-zip format (PYTORCH1), which widen does not read";
    if (size >= 262 && memcmp(p + 257, "ustar", 5) == 0)
        return "a tar archive (the oldest torch.save format, or not a checkpoint at all), which widen does not read";
    /* a safetensors header length ending in 0x7b or 0x5b has zero high bytes; JSON text does not */
    if (size >= 1 && (p[0] == '{' || p[0] == '[') && (size < 8 || memcmp(p + 1, "\0\0\0\0\0\0\0", 7) != 0))
        return "a JSON file, not a checkpoint (a shard index or a config? widen reads an index as part of its model "
               "folder: name the folder or the *.index.json)";
    return NULL;
}

/* np.savez's archives begin with a member "NAME.npy"; torch.save's with "archive/data.pkl". */
static int first_member_is_npy(const unsigned char *p, uint64_t size)
{
    if (size < 30) return 0;
    uint64_t n = (uint64_t)p[26] | (uint64_t)p[27] << 8;
    return n > 4 && 30 + n <= size && memcmp(p + 30 + n - 4, ".npy", 4) == 0;
}

void widen_open_options_init(widen_open_options *o, size_t size)
{
    const widen_open_options defaults = {.size = sizeof defaults};
    widen_options_init(o, size, &defaults, sizeof defaults);
}

widen_status widen_open_with(const char *path, const widen_open_options *options, widen_checkpoint **out,
                             widen_error *err)
{
    if (!path || !out)
        return widen_fail(err, WIDEN_EUSAGE, "widen_open_with needs a path and somewhere to put the checkpoint");
    widen_open_options o;
    widen_open_options_init(&o, sizeof o);
    *out = NULL;
    widen_status st = widen_options_read(&o, sizeof o, WIDEN_OPEN_OPTIONS_V1, options, "widen_open_options", err);
    if (st) return st;
    widen_open_work work = {.progress = o.progress, .progress_user = o.progress_user};
    return widen_open_ex(path, &work, out, err);
}

widen_status widen_open(const char *path, widen_checkpoint **out, widen_error *err)
{
    if (!path || !out) return widen_fail(err, WIDEN_EUSAGE, "widen_open needs a path and somewhere to put the checkpoint");
    return widen_open_ex(path, NULL, out, err);
}

/* After the data is read: the pages the reading touched go, and the data is read front to back. */
static void loaded(widen_checkpoint *c)
{
    if (c->inflated) widen_mapping_release(&c->file, 0, c->file.size); /* what inflating read */
    if (c->map) madvise((void *)c->map, (size_t)c->size, MADV_SEQUENTIAL);
}

widen_status widen_checkpoint_load(widen_checkpoint *c, widen_progress_fn progress, void *progress_user,
                                   widen_error *err)
{
    if (!c->pending_work) return WIDEN_OK;
    widen_status st = widen_npz_load(c, progress, progress_user, err);
    if (!st) loaded(c);
    return st;
}

widen_status widen_open_ex(const char *path, const widen_open_work *work, widen_checkpoint **out, widen_error *err)
{
    if (!path || !out) return widen_fail(err, WIDEN_EUSAGE, "widen_open needs a path and somewhere to put the checkpoint");
    *out = NULL;
    widen_checkpoint *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    c->fd = -1;
    widen_status st;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a file) */
    c->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
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
        st = widen_fail(err, S_ISDIR(sb.st_mode) ? WIDEN_EUSAGE : WIDEN_EFORMAT, "%s: %s", path,
                        S_ISDIR(sb.st_mode) ? "is a directory" : S_ISFIFO(sb.st_mode) ? "is a FIFO, not a regular file"
                        : "is not a regular file");
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
    char buf[256];
    const char *kind = unsupported_kind(c->map, c->size, buf, sizeof buf);
    if (kind) {
        st = widen_fail(err, WIDEN_EFORMAT, "%s: this is %s", path, kind);
        goto fail;
    }
    if (c->size >= 4 && memcmp(c->map, "PK\x03\x04", 4) == 0 && first_member_is_npy(c->map, c->size)) {
        c->format = "npz";
        st = widen_npz_read(c, work, err);
    } else if (c->size >= 4 && memcmp(c->map, "PK\x03\x04", 4) == 0) {
        c->format = "pt";
        st = widen_torch_read(c, err);
    } else if (legacy_torch(c->map, c->size) && !plausible_safetensors(c->map, c->size)) {
        c->format = "pt";
        st = widen_torch_legacy_read(c, err);
    } else if (c->size >= 6 && memcmp(c->map, "\x93NUMPY", 6) == 0) {
        c->format = "npy";
        st = widen_npy_read(c, err);
    } else {
        c->format = "safetensors";
        st = widen_safetensors_read(c, err);
    }
    if (st) goto fail;
    int named = c->by_name.count > 0; /* the torch reader's table of every path, names included */
    for (size_t i = 0; !named && i < c->count; i++) { /* the readers refused repeated names */
        int r = widen_table_put(&c->by_name, c->tensors[i].name, strlen(c->tensors[i].name), i, NULL);
        if (r <= 0) {
            st = r < 0 ? widen_fail(err, WIDEN_EIO, "out of memory")
                       : widen_fail(err, WIDEN_EFORMAT, "%s: two tensors are named '%s'", path, c->tensors[i].name);
            goto fail;
        }
    }
    widen_release(c, 0, c->size); /* the pages reading the headers touched */
    if (!c->pending_work) loaded(c);
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
    if (c->pending_free) c->pending_free(c->pending);
    if (c->map) munmap((void *)c->map, (size_t)c->size);
    if (c->fd >= 0) close(c->fd);
    if (c->inflated && c->file.data) munmap((void *)c->file.data, (size_t)c->file.size);
    if (c->inflated && c->file.fd >= 0) close(c->file.fd);
    for (size_t i = 0; c->names && i < c->count; i++) free(c->names[i]);
    free(c->names);
    free(c->tensors);
    free(c->layouts);
    for (size_t i = 0; !c->pool && i < c->metadata_count; i++) {
        free(c->metadata[i].key);
        free(c->metadata[i].value);
    }
    free(c->metadata);
    free(c->pool);
    widen_table_free(&c->by_name);
    free(c->path);
    free(c);
}

uint64_t widen_work_limit(uint64_t file_size)
{
    uint64_t limit;
    if (__builtin_mul_overflow(file_size, (uint64_t)WIDEN_WORK_FACTOR, &limit) ||
        __builtin_add_overflow(limit, WIDEN_WORK_SLACK, &limit))
        limit = UINT64_MAX;
    return limit;
}

widen_status widen_checkpoint_check_work(const widen_checkpoint *c, widen_error *err)
{
    /* of the input file: an .npz's inflated arrays are not what the bound is measured against */
    if (c->logical_bytes <= widen_work_limit(widen_checkpoint_file(c).size)) return WIDEN_OK;
    size_t largest = 0;
    uint64_t most = 0;
    for (size_t i = 0; i < c->count; i++) {
        uint64_t bytes = widen_tensor_elements(c, i) * (widen_dtype_bits(c->tensors[i].dtype) / 8);
        if (bytes > most) most = bytes, largest = i;
    }
    return widen_fail(err, WIDEN_EFORMAT, "%s: its tensor names describe %llu bytes of elements (views and names of "
                      "one storage each count), over %u times the file's size (the largest: '%s'); widen does not read "
                      "them", c->path, (unsigned long long)c->logical_bytes, WIDEN_WORK_FACTOR,
                      c->count ? c->tensors[largest].name : "");
}

const char *widen_checkpoint_path(const widen_checkpoint *c) { return c ? c->path : NULL; }
int widen_checkpoint_fd(const widen_checkpoint *c) { return c->fd; }
const char *widen_checkpoint_format(const widen_checkpoint *c) { return c ? c->format : NULL; }
uint64_t widen_checkpoint_size(const widen_checkpoint *c) { return c ? widen_checkpoint_file(c).size : 0; }
size_t widen_tensor_count(const widen_checkpoint *c) { return c ? c->count : 0; }

const widen_tensor_info *widen_tensor_at(const widen_checkpoint *c, size_t index)
{
    return c && index < c->count ? &c->tensors[index] : NULL;
}

long widen_tensor_find(const widen_checkpoint *c, const char *name)
{
    size_t index; /* a torch reader's table holds every path, tensors' with their index */
    if (!c || !name || !widen_table_get(&c->by_name, name, strlen(name), &index) || index >= c->count) return -1;
    return (long)index;
}

size_t widen_metadata_count(const widen_checkpoint *c) { return c ? c->metadata_count : 0; }

void widen_metadata_at(const widen_checkpoint *c, size_t index, const char **key, const char **value)
{
    if (!key || !value) return;
    if (!c) index = SIZE_MAX;
    *key = c && index < c->metadata_count ? c->metadata[index].key : NULL;
    *value = c && index < c->metadata_count ? c->metadata[index].value : NULL;
}

size_t widen_find_candidates(const widen_checkpoint *c, int axis, uint64_t from, size_t *indices,
                             size_t max)
{
    if (!c || (!indices && max)) return 0;
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
