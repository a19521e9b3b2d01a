/* npy.c: NumPy .npy files (np.save), read as numpy.lib.format reads them or refused. The header is
 * a Python literal dict, {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }, which NumPy
 * evaluates with ast.literal_eval: widen parses the literals np.save writes (strings in either quote,
 * True/False, tuples of integers, trailing commas, Python 2's 3L in versions 1 and 2) and refuses
 * any other Python (an expression, a comment, a list, a repeated key). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    char msg[160];
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

static void npz_forget(void *user, uint64_t offset, uint64_t len)
{
    widen_release(user, offset, len);
}

static int by_offset(const void *a, const void *b)
{
    const widen_tensor_info *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* The archive's directory is needed only here: the tensors' offsets are all the rest reads (a
 * checkpoint's format state is a torch graph, which a .pt output synthesizes). */
static widen_status npz_members(widen_checkpoint *c, const widen_zip *zip, widen_error *err);

widen_status widen_npz_read(widen_checkpoint *c, widen_error *err)
{
    widen_zip zip = {0};
    widen_status st = widen_zip_read(c->map, c->size, c->path, &zip, npz_forget, c, err);
    if (!st) st = npz_members(c, &zip, err);
    widen_zip_free(&zip);
    return st;
}

static widen_status npz_members(widen_checkpoint *c, const widen_zip *zip, widen_error *err)
{
    widen_status st = WIDEN_OK;
    if (!(c->tensors = calloc(zip->count + 1, sizeof *c->tensors)) || !(c->names = calloc(zip->count + 1, sizeof *c->names)))
        return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < zip->count; i++) {
        const widen_zip_entry *e = &zip->entries[i];
        size_t len = strlen(e->name);
        /* np.load hands a member that is not .npy back as bytes: not an array widen can carry */
        if (len <= 4 || strcmp(e->name + len - 4, ".npy") != 0 || e->directory)
            return widen_fail(err, WIDEN_EFORMAT, "%s: member '%s' of the .npz archive is not a .npy array", c->path, e->name);
        if (e->method != 0)
            return widen_fail(err, WIDEN_EFORMAT, "%s: member '%s' is compressed (np.savez_compressed), which widen does "
                              "not read yet: save it with np.savez", c->path, e->name);
        char what[700];
        snprintf(what, sizeof what, "%s: member '%.500s'", c->path, e->name);
        widen_npy_header h;
        if ((st = widen_npy_parse_header(c->map + e->data_offset, e->size, what, &h, err))) return st;
        if ((st = npy_layout(c, c->count, zip->count + 1, &h, err))) return st;
        if (h.nbytes != e->size - h.data_offset)
            return widen_fail(err, WIDEN_EFORMAT, "%s: its header describes %llu bytes of data, the member holds %llu", what,
                              (unsigned long long)h.nbytes, (unsigned long long)(e->size - h.data_offset));
        if (!(c->names[c->count] = strndup(e->name, len - 4))) return widen_fail(err, WIDEN_EIO, "out of memory");
        widen_tensor_info *t = &c->tensors[c->count++];
        t->name = c->names[c->count - 1];
        t->dtype = h.dtype;
        t->rank = h.rank;
        memcpy(t->shape, h.shape, sizeof h.shape);
        t->offset = e->data_offset + h.data_offset;
        t->nbytes = h.nbytes;
        c->logical_bytes += h.nbytes;
    }
    /* file order; the names stay with their tensors, the layouts go with them */
    if (!c->count) return WIDEN_OK;
    if (!c->layouts) {
        qsort(c->tensors, c->count, sizeof *c->tensors, by_offset);
        return WIDEN_OK;
    }
    typedef struct { widen_tensor_info t; widen_layout l; } pair;
    pair *pairs = malloc(c->count * sizeof *pairs);
    if (!pairs) return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < c->count; i++) pairs[i] = (pair){c->tensors[i], c->layouts[i]};
    qsort(pairs, c->count, sizeof *pairs, by_offset); /* a pair starts with its tensor */
    for (size_t i = 0; i < c->count; i++) c->tensors[i] = pairs[i].t, c->layouts[i] = pairs[i].l;
    free(pairs);
    return WIDEN_OK;
}
