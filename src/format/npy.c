/* npy.c: NumPy .npy files (np.save), read as numpy.lib.format reads them or refused. The header is
 * a Python literal dict, {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }, which NumPy
 * evaluates with ast.literal_eval: widen parses the literals np.save writes (strings in either quote,
 * True/False, tuples of integers, trailing commas, Python 2's 3L in versions 1 and 2) and refuses
 * any other Python (an expression, a comment, a list, a repeated key). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define ZLIB_CONST
#include <libdeflate.h>
#include <zlib.h>

#include "../dtype.h"
#include "../internal.h"
#include "npy.h"

/* NumPy refuses headers longer than this unless told to trust the file. */
#define NPY_MAX_HEADER 10000u

typedef struct hparser {
    const char *p, *end;
    int version;
    const char *path;
    widen_error *err;
} hparser;

static widen_status bad(hparser *h, const char *what)
{
    return widen_fail(h->err, WIDEN_EFORMAT, "%s: the NumPy .npy header is not what np.save writes: %s", h->path, what);
}

static void ws(hparser *h)
{
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++;
}

static int take(hparser *h, char c)
{
    ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes (np.save writes none: keys and dtype descriptions). */
static widen_status string(hparser *h, char *out, size_t size)
{
    ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return bad(h, "a string was expected");
    char q = *h->p++;
    size_t n = 0;
    while (h->p < h->end && *h->p != q) {
        if (*h->p == '\\' || *h->p == '\n' || n + 1 >= size) return bad(h, "a string widen does not read");
        out[n++] = *h->p++;
    }
    if (h->p >= h->end) return bad(h, "an unterminated string");
    h->p++;
    out[n] = '\0';
    return WIDEN_OK;
}

static int word(hparser *h, const char *w)
{
    ws(h);
    size_t n = strlen(w);
    if ((size_t)(h->end - h->p) >= n && memcmp(h->p, w, n) == 0 &&
        ((size_t)(h->end - h->p) == n || !((h->p[n] >= 'a' && h->p[n] <= 'z') || (h->p[n] >= 'A' && h->p[n] <= 'Z') ||
                                           (h->p[n] >= '0' && h->p[n] <= '9') || h->p[n] == '_'))) {
        h->p += n;
        return 1;
    }
    return 0;
}

/* (d0, d1, ...): non-negative integers below 2^63. */
static widen_status shape(hparser *h, int *rank, uint64_t *dims)
{
    if (!take(h, '(')) return bad(h, "the shape is not a tuple");
    *rank = 0;
    int comma = 1;
    for (;;) {
        if (take(h, ')')) break;
        if (!comma) return bad(h, "',' or ')' expected in the shape");
        if (*rank >= WIDEN_MAX_RANK) return bad(h, "a shape of more than 16 dimensions");
        ws(h);
        uint64_t v = 0;
        if (word(h, "True") || word(h, "False")) return bad(h, "a shape entry that is a boolean (NumPy refuses it)");
        {
            if (h->p >= h->end || *h->p < '0' || *h->p > '9') return bad(h, "a shape entry that is not a non-negative integer");
            if (*h->p == '0' && h->p + 1 < h->end && h->p[1] >= '0' && h->p[1] <= '9')
                return bad(h, "an integer with a leading zero (not Python)");
            while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
                if (v > (UINT64_MAX >> 1) / 10) return bad(h, "a shape entry of 2^63 or more");
                v = v * 10 + (uint64_t)(*h->p++ - '0');
            }
            if (h->version <= 2 && h->p < h->end && (*h->p == 'L' || *h->p == 'l')) h->p++; /* Python 2's long */
        }
        dims[(*rank)++] = v;
        comma = take(h, ',');
    }
    /* (3) is not a tuple in Python: one entry needs its comma */
    if (*rank == 1 && !comma) return bad(h, "the shape (n) is an integer, not a tuple: (n,)");
    return WIDEN_OK;
}

/* '<f4', '|u1', ... : NumPy's descr of a plain numeric dtype. */
static widen_status descr_dtype(hparser *h, const char *d, widen_dtype *out, int *big)
{
    static const struct {
        const char *code;
        widen_dtype dtype;
    } codes[] = {{"b1", WIDEN_BOOL}, {"i1", WIDEN_I8},  {"u1", WIDEN_U8},  {"i2", WIDEN_I16}, {"u2", WIDEN_U16},
                 {"i4", WIDEN_I32},  {"u4", WIDEN_U32}, {"i8", WIDEN_I64}, {"u8", WIDEN_U64}, {"f2", WIDEN_F16},
                 {"f4", WIDEN_F32},  {"f8", WIDEN_F64}, {"c8", WIDEN_C64}};
    char msg[320];
    if (strchr(d, 'O')) return bad(h, "an object dtype (|O): NumPy would need to unpickle it");
    if ((d[0] == '<' || d[0] == '>' || d[0] == '|' || d[0] == '=') && strlen(d) == 3) {
        for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
            if (strcmp(d + 1, codes[i].code) != 0) continue;
            int one = d[2] == '1';
            if (d[0] == '|' && !one) break; /* no byte order on a multi-byte type: not NumPy's */
            *out = codes[i].dtype;
            *big = d[0] == '>' && !one;
            return WIDEN_OK;
        }
    }
    if ((d[0] == '<' || d[0] == '>' || d[0] == '|') && strcmp(d + 1, "V2") == 0) {
        snprintf(msg, sizeof msg, "dtype '%s': raw 2-byte records, which is how np.save stores ml_dtypes' bfloat16, and "
                 "any other 2-byte record alike; nothing in the file says which, so widen does not read it (save bfloat16 "
                 "as float32, or as safetensors)", d);
        return bad(h, msg);
    }
    snprintf(msg, sizeof msg, "dtype '%.40s' is not one widen reads (booleans, integers, float16/32/64, complex64)", d);
    return bad(h, msg);
}

widen_status widen_npy_parse_header(const unsigned char *data, uint64_t size, const char *path, widen_npy_header *out,
                                    widen_error *err)
{
    memset(out, 0, sizeof *out);
    if (size < 10 || memcmp(data, "\x93NUMPY", 6) != 0)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a NumPy .npy file (no \\x93NUMPY magic)", path);
    unsigned major = data[6], minor = data[7];
    if (minor != 0 || major < 1 || major > 3)
        return widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy format version %u.%u, which NumPy does not write (1.0, 2.0, 3.0)",
                          path, major, minor);
    uint64_t len = major == 1 ? (uint64_t)data[8] | (uint64_t)data[9] << 8 : 0, start = major == 1 ? 10 : 12;
    if (major > 1) {
        if (size < 12) return widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy header is cut short", path);
        for (int i = 3; i >= 0; i--) len = len << 8 | data[8 + i];
    }
    if (len > size - start) return widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy header runs past the end of the file", path);
    if (len > NPY_MAX_HEADER)
        return widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy header of %llu bytes: NumPy refuses more than %u unless told to "
                          "trust the file", path, (unsigned long long)len, NPY_MAX_HEADER);
    hparser h = {.p = (const char *)data + start, .end = (const char *)data + start + len, .version = (int)major,
                 .path = path, .err = err};
    /* versions 1 and 2 are latin-1 text, 3 is UTF-8: np.save writes ASCII, which widen reads */
    for (const char *c = h.p; c < h.end; c++)
        if ((unsigned char)*c >= 0x80 || *c == '\0') return bad(&h, "bytes that are not ASCII");
    if (!take(&h, '{')) return bad(&h, "not a dict literal");
    int seen[3] = {0, 0, 0}, comma = 1;
    char key[32], value[64];
    widen_status st = WIDEN_OK;
    while (!st && !take(&h, '}')) {
        if (!comma) return bad(&h, "',' or '}' expected");
        if ((st = string(&h, key, sizeof key))) return st;
        if (!take(&h, ':')) return bad(&h, "':' expected");
        int k = strcmp(key, "descr") == 0 ? 0 : strcmp(key, "fortran_order") == 0 ? 1 : strcmp(key, "shape") == 0 ? 2 : -1;
        if (k < 0) return bad(&h, "a key other than descr, fortran_order and shape");
        if (seen[k]++) return bad(&h, "a key given twice");
        if (k == 0) {
            ws(&h);
            if (h.p < h.end && *h.p == '[') return bad(&h, "a structured dtype (a list of fields)");
            if ((st = string(&h, value, sizeof value)) || (st = descr_dtype(&h, value, &out->dtype, &out->big_endian)))
                return st;
        } else if (k == 1) {
            if (word(&h, "True")) out->fortran_order = 1;
            else if (!word(&h, "False")) return bad(&h, "fortran_order is not True or False");
        } else if ((st = shape(&h, &out->rank, out->shape))) {
            return st;
        }
        comma = take(&h, ',');
    }
    ws(&h);
    if (h.p != h.end) return bad(&h, "text after the dict");
    if (!seen[0] || !seen[1] || !seen[2]) return bad(&h, "descr, fortran_order or shape is missing");
    out->data_offset = start + len;
    uint64_t count = 1;
    for (int d = 0; d < out->rank; d++)
        if (out->shape[d] && count > UINT64_MAX / out->shape[d])
            return widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy shape's element count overflows", path);
        else
            count *= out->shape[d];
    unsigned bits = widen_dtype_bits(out->dtype);
    if (count > UINT64_MAX / (bits / 8)) return widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy data size overflows", path);
    out->nbytes = count * (bits / 8);
    /* one dimension (or none) past size 1: Fortran order lays the elements out as C order does */
    int spread = 0;
    for (int d = 0; d < out->rank; d++) spread += out->shape[d] > 1;
    if (out->fortran_order && spread > 1) out->column_major = 1;
    return WIDEN_OK;
}

/* Tensor `index` of `capacity` as the header lays it out: where its bytes are not its values in
 * row-major little-endian order (Fortran order, big-endian), the layout that gathers them (the
 * array's values, as np.load gives them; hashed and written as those). */
static widen_status npy_layout(widen_checkpoint *c, size_t index, size_t capacity, const widen_npy_header *h,
                               widen_error *err)
{
    if (!h->column_major && !h->big_endian) return WIDEN_OK;
    if (!c->layouts && !(c->layouts = calloc(capacity, sizeof *c->layouts)))
        return widen_fail(err, WIDEN_EIO, "out of memory");
    widen_layout *l = &c->layouts[index];
    unsigned esize = widen_dtype_bits(h->dtype) / 8;
    l->gathered = 1;
    l->swap = (uint8_t)(h->big_endian ? (h->dtype == WIDEN_C64 ? esize / 2 : esize) : 0); /* complex: each half */
    l->row_major = !h->column_major;
    uint64_t step = 1;
    for (int k = 0; k < h->rank; k++) { /* Fortran order: the first dimension fastest */
        int d = h->column_major ? k : h->rank - 1 - k;
        l->strides[d] = step;
        step *= h->shape[d] ? h->shape[d] : 1;
    }
    return WIDEN_OK;
}

widen_status widen_npy_read(widen_checkpoint *c, widen_error *err)
{
    widen_npy_header h;
    widen_status st = widen_npy_parse_header(c->map, c->size, c->path, &h, err);
    if (st || (st = npy_layout(c, 0, 1, &h, err))) return st;
    if (h.nbytes != c->size - h.data_offset)
        return widen_fail(err, WIDEN_EFORMAT, "%s: the NumPy .npy header describes %llu bytes of data, the file holds %llu (%s)",
                          c->path, (unsigned long long)h.nbytes, (unsigned long long)(c->size - h.data_offset),
                          h.nbytes > c->size - h.data_offset ? "truncated" : "trailing bytes");
    if (!(c->tensors = calloc(1, sizeof *c->tensors)) || !(c->names = calloc(1, sizeof *c->names)) ||
        !(c->names[0] = strdup(WIDEN_NPY_NAME)))
        return widen_fail(err, WIDEN_EIO, "out of memory");
    widen_tensor_info *t = &c->tensors[0];
    t->name = c->names[0];
    t->dtype = h.dtype;
    t->rank = h.rank;
    memcpy(t->shape, h.shape, sizeof h.shape);
    t->offset = h.data_offset;
    t->nbytes = h.nbytes;
    c->count = 1;
    c->logical_bytes = h.nbytes;
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* .npz: a zip of .npy members (np.savez stores them, np.savez_compressed deflates them)           */

/* Deflated members are inflated at open, front to back with zlib's streaming inflate, into an
 * unlinked temporary file that then stands for the checkpoint's data (map, fd, size): the data path
 * reads, hashes and copies the arrays from there as from any file (random access, several passes,
 * copy_file_range). Memory stays bounded: one buffer of this size, and the compressed bytes handed
 * to zlib this much at a time, their pages released once used. */
#define NPZ_CHUNK (1u << 20)
/* The temporary file's arrays start on multiples of this, as a safetensors file's do. */
#define NPZ_ALIGN 64u

typedef struct npz_member {
    const widen_zip_entry *e;
    widen_npy_header h;
} npz_member;

/* What the header pass leaves to the data pass: the directory, the members in file order with their
 * headers, and the work (the progress total). */
typedef struct npz_pending {
    widen_zip zip;
    npz_member *m;
    size_t count;
    uint64_t declared; /* inflated bytes the deflated members declare */
    uint64_t work;
} npz_pending;

static void npz_pending_free(void *state)
{
    npz_pending *p = state;
    if (!p) return;
    widen_zip_free(&p->zip);
    free(p->m);
    free(p);
}

/* The data pass's progress: `done` of `total` bytes of work, reported every WIDEN_OPEN_STEP and at
 * the end; a nonzero answer stops the pass. */
typedef struct npz_progress {
    widen_progress_fn fn;
    void *user;
    const char *path;
    uint64_t done, total, reported;
    int ended;
} npz_progress;

static widen_status npz_advance(npz_progress *p, uint64_t bytes, widen_error *err)
{
    p->done += bytes;
    if (p->done > p->total) p->done = p->total; /* (the declared sizes are checked as they are reached) */
    if (!p->fn || p->ended || (p->done - p->reported < WIDEN_OPEN_STEP && p->done != p->total)) return WIDEN_OK;
    p->reported = p->done;
    p->ended = p->done == p->total;
    return p->fn(p->user, p->done, p->total) ? widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", p->path)
                                             : WIDEN_OK;
}

/* np.load reads a stored member through zipfile, which checks its CRC-32 at the end: a member that
 * fails it is refused here too, read a step at a time (its pages released as they are read). */
static widen_status stored_crc(widen_checkpoint *c, const widen_zip_entry *e, const char *what, npz_progress *pr,
                               widen_error *err)
{
    enum { STEP = 8u << 20 };
    uint32_t crc = 0;
    for (uint64_t off = 0; off < e->size; off += STEP) {
        uint64_t len = e->size - off < STEP ? e->size - off : STEP;
        crc = libdeflate_crc32(crc, c->map + e->data_offset + off, (size_t)len);
        widen_release(c, e->data_offset + off, len);
        widen_status st = npz_advance(pr, len, err);
        if (st) return st;
    }
    if (crc != e->crc)
        return widen_fail(err, WIDEN_EFORMAT, "%s: fails its CRC-32 check (np.load refuses it: a damaged file)", what);
    return WIDEN_OK;
}

static int member_by_offset(const void *a, const void *b)
{
    const npz_member *x = a, *y = b;
    return x->e->data_offset < y->e->data_offset ? -1 : x->e->data_offset > y->e->data_offset;
}

/* One member's raw deflate stream (zip method 8), inflated front to back. */
typedef struct npz_inflater {
    z_stream z;
    const widen_mapping *file;
    uint64_t at, end;  /* the compressed bytes not yet handed to zlib: [at, end) of the file */
    uint64_t released; /* pages before this are released */
    uint32_t crc;      /* of the bytes inflated so far */
    int ended, live;
} npz_inflater;

static widen_status inflate_start(npz_inflater *f, const widen_mapping *file, const widen_zip_entry *e, widen_error *err)
{
    memset(f, 0, sizeof *f);
    f->file = file;
    f->at = f->released = e->data_offset;
    f->end = e->data_offset + e->size;
    if (inflateInit2(&f->z, -MAX_WBITS) != Z_OK) return widen_fail(err, WIDEN_EIO, "out of memory");
    f->live = 1;
    return WIDEN_OK;
}

static void inflate_stop(npz_inflater *f)
{
    if (f->live) inflateEnd(&f->z);
    f->live = 0;
}

/* Up to `want` (<= NPZ_CHUNK) more inflated bytes into out; *got < want only where the stream ended. */
static widen_status inflate_some(npz_inflater *f, unsigned char *out, size_t want, size_t *got, const char *what,
                                 widen_error *err)
{
    f->z.next_out = out;
    f->z.avail_out = (uInt)want;
    while (f->z.avail_out && !f->ended) {
        if (!f->z.avail_in) { /* all handed so far is used: its pages go */
            if (f->at == f->end)
                return widen_fail(err, WIDEN_EFORMAT, "%s: its deflate stream is cut short (the member's compressed "
                                  "bytes end before the stream does)", what);
            widen_mapping_release(f->file, f->released, f->at - f->released);
            f->released = f->at;
            uint64_t n = f->end - f->at < NPZ_CHUNK ? f->end - f->at : NPZ_CHUNK;
            f->z.next_in = f->file->data + f->at;
            f->z.avail_in = (uInt)n;
            f->at += n;
        }
        int r = inflate(&f->z, Z_NO_FLUSH);
        if (r == Z_STREAM_END) f->ended = 1;
        else if (r == Z_MEM_ERROR) return widen_fail(err, WIDEN_EIO, "out of memory");
        else if (r != Z_OK && !(r == Z_BUF_ERROR && !f->z.avail_in))
            return widen_fail(err, WIDEN_EFORMAT, "%s: its deflate stream is damaged (zlib: %s)", what,
                              f->z.msg ? f->z.msg : "no progress");
    }
    *got = want - f->z.avail_out;
    f->crc = (uint32_t)libdeflate_crc32(f->crc, out, *got);
    return WIDEN_OK;
}

/* After the bytes the directory declares: the stream ends there, with the member's last compressed
 * byte, and the CRC-32 agrees (what zipfile checks, and more: it ignores trailing bytes). */
static widen_status inflate_finish(npz_inflater *f, const widen_zip_entry *e, const char *what, widen_error *err)
{
    if (!f->ended) {
        unsigned char extra;
        size_t got;
        widen_status st = inflate_some(f, &extra, 1, &got, what, err);
        if (st) return st;
        if (got)
            return widen_fail(err, WIDEN_EFORMAT, "%s: it inflates to more than the %llu bytes the zip directory "
                              "declares", what, (unsigned long long)e->usize);
    }
    uint64_t left = f->z.avail_in + (f->end - f->at);
    if (left)
        return widen_fail(err, WIDEN_EFORMAT, "%s: its deflate stream ends %llu bytes before the member's compressed "
                          "bytes do", what, (unsigned long long)left);
    if (f->crc != e->crc)
        return widen_fail(err, WIDEN_EFORMAT, "%s: the CRC-32 of its inflated bytes is %08x, the zip directory says "
                          "%08x (the member is damaged)", what, (unsigned)f->crc, (unsigned)e->crc);
    return WIDEN_OK;
}

static widen_status inflated_short(const widen_zip_entry *e, uint64_t got, const char *what, widen_error *err)
{
    return widen_fail(err, WIDEN_EFORMAT, "%s: it inflates to only %llu bytes, the zip directory declares %llu", what,
                      (unsigned long long)got, (unsigned long long)e->usize);
}

/* The .npy header at the front of a deflated member: its first bytes inflated, no more than
 * NumPy's header limit allows. */
static widen_status deflated_header(const widen_mapping *file, const widen_zip_entry *e, const char *what,
                                    widen_npy_header *h, widen_error *err)
{
    unsigned char head[12 + NPY_MAX_HEADER];
    npz_inflater f;
    size_t got = 0, more = 0;
    uint64_t want = e->usize < 12 ? e->usize : 12;
    widen_status st = inflate_start(&f, file, e, err);
    if (!st) st = inflate_some(&f, head, (size_t)want, &got, what, err);
    if (!st && got < want) st = inflated_short(e, got, what, err);
    if (!st && got == 12 && memcmp(head, "\x93NUMPY", 6) == 0 && head[6] >= 1 && head[6] <= 3 && head[7] == 0) {
        uint64_t start = head[6] == 1 ? 10 : 12, len = head[6] == 1 ? (uint64_t)head[8] | (uint64_t)head[9] << 8
                                                                 : (uint64_t)head[8] | (uint64_t)head[9] << 8 |
                                                                       (uint64_t)head[10] << 16 | (uint64_t)head[11] << 24;
        if (len > NPY_MAX_HEADER) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: NumPy .npy header of %llu bytes: NumPy refuses more than %u unless "
                            "told to trust the file", what, (unsigned long long)len, NPY_MAX_HEADER);
        } else {
            want = (e->usize < start + len ? e->usize : start + len) - got;
            st = inflate_some(&f, head + got, (size_t)want, &more, what, err);
            got += more;
            if (!st && more < want) st = inflated_short(e, got, what, err);
        }
    }
    inflate_stop(&f);
    if (!st) st = widen_npy_parse_header(head, got, what, h, err);
    if (!st && (e->usize < h->data_offset || e->usize - h->data_offset != h->nbytes))
        st = widen_fail(err, WIDEN_EFORMAT, "%s: its header describes %llu bytes of data, the zip directory declares "
                        "%llu inflated bytes after it", what, (unsigned long long)h->nbytes,
                        (unsigned long long)(e->usize - (e->usize < h->data_offset ? e->usize : h->data_offset)));
    return st;
}

static void member_what(const widen_checkpoint *c, const widen_zip_entry *e, char *what, size_t size)
{
    snprintf(what, size, "%s: member '%.500s'", c->path, e->name);
}

/* The unlinked temporary file in $TMPDIR (or /tmp): O_TMPFILE has no name at all; where the file
 * system cannot, a name unlinked at once. Gone with the descriptor, whatever ends the process. */
static widen_status temp_open(const char *dir, int *fd, widen_error *err)
{
    *fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (*fd >= 0) return WIDEN_OK;
    size_t n = strlen(dir) + 32;
    char *name = malloc(n);
    if (!name) return widen_fail(err, WIDEN_EIO, "out of memory");
    snprintf(name, n, "%s/.widen-npz-XXXXXX", dir);
    *fd = mkostemp(name, O_CLOEXEC);
    widen_status st = *fd < 0 ? widen_fail(err, WIDEN_EIO, "cannot create a temporary file in %s (TMPDIR) to inflate "
                                           "the archive's compressed members into: %s", dir, strerror(errno))
                              : WIDEN_OK;
    if (*fd >= 0) unlink(name);
    free(name);
    return st;
}

/* Every deflated member inflated and checked whole; where one holds data, every array's bytes go into
 * the temporary file (stored ones copied), which then becomes the checkpoint's data. */
static widen_status npz_inflate(widen_checkpoint *c, const npz_member *m, size_t count, npz_progress *pr,
                                widen_error *err)
{
    uint64_t spill = 0;
    int needed = 0;
    for (size_t i = 0; i < count; i++) needed |= m[i].e->method == 8 && m[i].h.nbytes;
    for (size_t i = 0; needed && i < count; i++)
        if (m[i].h.nbytes) spill = (spill + NPZ_ALIGN - 1) / NPZ_ALIGN * NPZ_ALIGN + m[i].h.nbytes;
    const widen_mapping file = {c->map, c->size, c->fd};
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    size_t target_size = strlen(c->path) + strlen(dir) + 96;
    char *target = malloc(target_size), what[700];
    unsigned char *buffer = malloc(NPZ_CHUNK);
    static const unsigned char zeros[NPZ_ALIGN];
    int fd = -1;
    widen_status st = target && buffer ? WIDEN_OK : widen_fail(err, WIDEN_EIO, "out of memory");
    if (!st) snprintf(target, target_size, "%s: inflating its members into a temporary file in %s (TMPDIR)", c->path, dir);
    if (!st && needed) st = temp_open(dir, &fd, err);
    /* the room first, where the file system can tell: a full disk is found before the work */
    if (!st && needed && fallocate(fd, 0, 0, (off_t)spill) != 0 && errno != EOPNOTSUPP && errno != ENOSYS)
        st = widen_fail(err, WIDEN_EIO, "%s: %llu bytes: %s", target, (unsigned long long)spill, strerror(errno));
    uint64_t pos = 0;
    for (size_t i = 0; i < count && !st; i++) {
        const widen_zip_entry *e = m[i].e;
        widen_tensor_info *t = &c->tensors[i];
        member_what(c, e, what, sizeof what);
        if (needed && t->nbytes && pos % NPZ_ALIGN) {
            st = widen_write_all(fd, zeros, NPZ_ALIGN - pos % NPZ_ALIGN, target, err);
            pos += NPZ_ALIGN - pos % NPZ_ALIGN;
        }
        if (!st && e->method == 0 && needed && t->nbytes) { /* a stored member of a mixed archive */
            for (uint64_t done = 0, len; !st && done < t->nbytes; done += len) { /* a step at a time */
                len = t->nbytes - done < WIDEN_OPEN_STEP ? t->nbytes - done : WIDEN_OPEN_STEP;
                st = file.fd >= 0 ? widen_copy_all(file.fd, t->offset + done, fd, len, target, NULL, err) : WIDEN_EUSAGE;
                if (st == WIDEN_EUSAGE) /* not between these file systems: through this process */
                    st = widen_write_all(fd, file.data + t->offset + done, (size_t)len, target, err);
                widen_mapping_release(&file, t->offset + done, len);
                if (!st) st = npz_advance(pr, len, err);
            }
            t->offset = pos;
            pos += t->nbytes;
        }
        if (st || e->method == 0) continue;
        npz_inflater f;
        size_t got;
        if (!(st = inflate_start(&f, &file, e, err))) st = inflate_some(&f, buffer, (size_t)m[i].h.data_offset, &got, what, err);
        if (!st && got < m[i].h.data_offset) st = inflated_short(e, got, what, err);
        if (!st) st = npz_advance(pr, got, err);
        for (uint64_t done = 0; !st && done < t->nbytes; done += got) {
            size_t want = t->nbytes - done < NPZ_CHUNK ? (size_t)(t->nbytes - done) : NPZ_CHUNK;
            st = inflate_some(&f, buffer, want, &got, what, err);
            if (!st && got < want) st = inflated_short(e, m[i].h.data_offset + done + got, what, err);
            if (!st) st = widen_write_all(fd, buffer, got, target, err);
            if (!st) st = npz_advance(pr, got, err);
        }
        if (!st) st = inflate_finish(&f, e, what, err);
        inflate_stop(&f);
        t->offset = needed ? pos : e->data_offset; /* an empty array's offset, in order, inside the file */
        pos += needed ? t->nbytes : 0;
    }
    if (!st && needed) {
        void *map = mmap(NULL, (size_t)spill, PROT_READ, MAP_SHARED, fd, 0);
        if (pos != spill) st = widen_fail(err, WIDEN_EIO, "%s: %llu bytes written of %llu", target,
                                          (unsigned long long)pos, (unsigned long long)spill);
        else if (map == MAP_FAILED) st = widen_fail(err, WIDEN_EIO, "%s: cannot map: %s", target, strerror(errno));
        if (!st) {
            c->file = file;
            c->inflated = 1;
            c->map = map;
            c->size = spill;
            c->fd = fd;
            fd = -1;
        } else if (map != MAP_FAILED) {
            munmap(map, (size_t)spill);
        }
    }
    if (fd >= 0) close(fd);
    free(buffer);
    free(target);
    return st;
}

static const char *method_name(unsigned method)
{
    switch (method) {
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "LZMA";
    case 93: return "zstd";
    case 95: return "xz";
    default: return "unknown";
    }
}

/* The members, checked in this order: what they are (.npy, stored or deflated), the inflated bytes
 * they declare (the work bound, before anything is inflated: a deflate bomb is refused at once),
 * each .npy header, and only then the deflated data, inflated whole. */
static widen_status npz_members(widen_checkpoint *c, npz_pending *p, uint64_t max_inflated, widen_error *err)
{
    const widen_zip *zip = &p->zip;
    widen_status st = WIDEN_OK;
    uint64_t declared = 0;
    char what[700];
    for (size_t i = 0; i < zip->count; i++) {
        const widen_zip_entry *e = &zip->entries[i];
        size_t len = strlen(e->name);
        /* np.load hands a member that is not .npy back as bytes: not an array widen can carry */
        if (len <= 4 || strcmp(e->name + len - 4, ".npy") != 0 || e->directory)
            return widen_fail(err, WIDEN_EFORMAT, "%s: member '%s' of the .npz archive is not a .npy array", c->path, e->name);
        if (e->method != 0 && e->method != 8)
            return widen_fail(err, WIDEN_EFORMAT, "%s: member '%s' is compressed with zip method %u (%s), which widen does "
                              "not read: it reads stored and deflated members (np.savez, np.savez_compressed)", c->path,
                              e->name, (unsigned)e->method, method_name(e->method));
        if (e->method == 8 && __builtin_add_overflow(declared, e->usize, &declared)) declared = UINT64_MAX;
    }
    if (declared > max_inflated)
        return widen_fail(err, WIDEN_EFORMAT, "%s: its compressed members declare %llu bytes inflated, over %u times the "
                          "file's size (a deflate bomb?); widen does not inflate them", c->path,
                          (unsigned long long)declared, WIDEN_WORK_FACTOR);
    npz_member *m = p->m = calloc(zip->count + 1, sizeof *m);
    if (!(c->tensors = calloc(zip->count + 1, sizeof *c->tensors)) || !(c->names = calloc(zip->count + 1, sizeof *c->names)) ||
        !m)
        return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < zip->count; i++) m[i].e = &zip->entries[i];
    /* file order: the archive is read front to back, and the tensors are listed so */
    if (zip->count) qsort(m, zip->count, sizeof *m, member_by_offset);
    const widen_mapping file = {c->map, c->size, c->fd};
    for (size_t i = 0; i < zip->count && !st; i++) {
        const widen_zip_entry *e = m[i].e;
        widen_npy_header *h = &m[i].h;
        member_what(c, e, what, sizeof what);
        if (e->method == 8) {
            if ((st = deflated_header(&file, e, what, h, err))) break;
        } else if ((st = widen_npy_parse_header(c->map + e->data_offset, e->size, what, h, err))) {
            break;
        }
        if ((st = npy_layout(c, c->count, zip->count + 1, h, err))) break;
        if (e->method == 0 && h->nbytes != e->size - h->data_offset) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: its header describes %llu bytes of data, the member holds %llu", what,
                            (unsigned long long)h->nbytes, (unsigned long long)(e->size - h->data_offset));
            break;
        }
        size_t len = strlen(e->name);
        if (!(c->names[c->count] = strndup(e->name, len - 4))) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            break;
        }
        widen_tensor_info *t = &c->tensors[c->count++];
        t->name = c->names[c->count - 1];
        t->dtype = h->dtype;
        t->rank = h->rank;
        memcpy(t->shape, h->shape, sizeof h->shape);
        t->offset = e->data_offset + h->data_offset; /* a deflated member's: set once inflated */
        t->nbytes = h->nbytes;
        c->logical_bytes += h->nbytes;
    }
    if (st) return st;
    /* the data pass's work: the stored members read for their CRC-32, the deflated ones inflated (the
     * sizes the directory declares, which the inflating then checks), and in an archive that holds
     * deflated arrays, the stored arrays copied next to them */
    int needed = 0;
    for (size_t i = 0; i < c->count; i++) needed |= m[i].e->method == 8 && m[i].h.nbytes;
    p->count = c->count;
    p->declared = declared;
    for (size_t i = 0; i < c->count; i++)
        p->work += m[i].e->method == 8 ? m[i].e->usize : m[i].e->size + (needed ? m[i].h.nbytes : 0);
    return WIDEN_OK;
}

/* The data pass: each stored member's CRC-32, then the deflated members inflated. */
static widen_status npz_load(widen_checkpoint *c, const npz_pending *p, widen_progress_fn progress,
                             void *progress_user, widen_error *err)
{
    npz_progress pr = {.fn = progress, .user = progress_user, .path = c->path, .total = p->work};
    widen_status st = WIDEN_OK;
    char what[700];
    for (size_t i = 0; i < p->count && !st; i++) {
        if (p->m[i].e->method != 0) continue;
        member_what(c, p->m[i].e, what, sizeof what);
        st = stored_crc(c, p->m[i].e, what, &pr, err);
    }
    if (!st && p->declared) st = npz_inflate(c, p->m, p->count, &pr, err);
    if (!st) st = npz_advance(&pr, 0, err); /* (the end, where no step fell on it) */
    return st;
}

widen_status widen_npz_read_bounded(widen_checkpoint *c, uint64_t max_inflated, const widen_open_work *work,
                                    widen_error *err)
{
    npz_pending *p = calloc(1, sizeof *p);
    if (!p) return widen_fail(err, WIDEN_EIO, "out of memory");
    widen_mapping file = {c->map, c->size, c->fd};
    widen_status st = widen_zip_read(&file, c->path, &p->zip, err);
    if (!st) st = widen_zip_check_zipfile(c->map, c->size, c->path, &p->zip, err);
    if (!st) st = npz_members(c, p, max_inflated, err);
    if (!st) c->open_work = p->work;
    if (!st && p->work && work && work->defer) {
        c->pending = p; /* until widen_npz_load, or widen_close */
        c->pending_free = npz_pending_free;
        c->pending_work = p->work;
        return WIDEN_OK;
    }
    if (!st && p->work) st = npz_load(c, p, work ? work->progress : NULL, work ? work->progress_user : NULL, err);
    npz_pending_free(p);
    return st;
}

widen_status widen_npz_read(widen_checkpoint *c, const widen_open_work *work, widen_error *err)
{
    return widen_npz_read_bounded(c, widen_work_limit(c->size), work, err);
}

widen_status widen_npz_load(widen_checkpoint *c, widen_progress_fn progress, void *progress_user, widen_error *err)
{
    npz_pending *p = c->pending_free == npz_pending_free ? c->pending : NULL;
    if (!p) return WIDEN_OK;
    c->pending = NULL;
    c->pending_free = NULL;
    c->pending_work = 0;
    widen_status st = npz_load(c, p, progress, progress_user, err);
    npz_pending_free(p);
    return st;
}
