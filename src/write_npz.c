/* write_npz.c: the .npz writer: an archive laid out byte for byte as np.savez (NumPy 1.24 on Python
 * 3.11's zipfile) writes one to a file, members in the input's order, streamed through the executor,
 * with the transform recorded as the archive comment. */
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "write.h"

#define NOMEM() widen_fail(err, WIDEN_EIO, "out of memory")

/* zipfile's ZIP64_LIMIT: sizes and offsets above it go into ZIP64 fields. */
#define ZIP64_LIMIT 0x7fffffffull
/* Python's ZipInfo's date_time default (1980-01-01 00:00), which ZipFile.open(name, 'w') keeps. */
enum { DOS_TIME = 0, DOS_DATE = (0 << 9) | (1 << 5) | 1 };
/* ZipInfo's external_attr for a file written through ZipFile.open: 0o600 << 16 (rw-------). */
#define EXTERNAL_ATTR (0600u << 16)
/* numpy.lib.format: the data starts on a multiple of ARRAY_ALIGN; GROWTH_AXIS_MAX_DIGITS spaces of room
 * are left after the dict for the first axis to grow in place. */
enum { ARRAY_ALIGN = 64, GROWTH_AXIS_MAX_DIGITS = 21 };

static void wr16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void wr32(unsigned char *p, uint32_t v) { wr16(p, (uint16_t)v), wr16(p + 2, (uint16_t)(v >> 16)); }
static void wr64(unsigned char *p, uint64_t v) { wr32(p, (uint32_t)v), wr32(p + 4, (uint32_t)(v >> 32)); }

/* ---------------------------------------------------------------------------------------------- */
/* What an .npz can hold                                                                            */

/* NumPy's descr of a widen dtype ('<f4', '|b1'), NULL where NumPy has none. */
static const char *npy_descr(widen_dtype dtype)
{
    switch (dtype) {
    case WIDEN_BOOL: return "|b1";
    case WIDEN_U8: return "|u1";
    case WIDEN_I8: return "|i1";
    case WIDEN_I16: return "<i2";
    case WIDEN_U16: return "<u2";
    case WIDEN_F16: return "<f2";
    case WIDEN_I32: return "<i4";
    case WIDEN_U32: return "<u4";
    case WIDEN_F32: return "<f4";
    case WIDEN_C64: return "<c8";
    case WIDEN_F64: return "<f8";
    case WIDEN_I64: return "<i8";
    case WIDEN_U64: return "<u8";
    default: return NULL; /* bfloat16, the float8s and the sub-byte floats */
    }
}

/* 1 if s[0..n) is UTF-8 as Python's strict decoder takes it (no overlong forms, no surrogates). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || len > n - i) return 0;
        unsigned cp = len == 1 ? c : c & (0x7fu >> len);
        for (unsigned k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3fu);
        }
        static const unsigned least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

/* A '..' path component, between '/' or '\' (which extractors on Windows take for a separator). */
static int has_parent_component(const char *name)
{
    for (const char *p = name; *p;) {
        size_t n = strcspn(p, "/\\");
        if (n == 2 && p[0] == '.' && p[1] == '.') return 1;
        p += n;
        if (*p) p++;
    }
    return 0;
}

widen_status widen_npz_check(const widen_checkpoint *ckpt, const widen_plan *plan, widen_error *err)
{
    const char *path = ckpt->path;
    for (size_t i = 0; i < plan->count; i++) {
        const widen_plan_tensor *p = &plan->tensors[i];
        if (!npy_descr(p->dtype))
            return widen_fail_hint(err, WIDEN_HINT_CAST, WIDEN_EUSAGE, "%s: tensor '%s' is %s in the output, which "
                                   "NumPy has no dtype for (np.savez would store raw bytes): write safetensors or .pt, "
                                   "or cast it to F32", path, p->name, widen_dtype_name(p->dtype));
    }
    widen_table exact = {0}, folded = {0};
    size_t total = 0;
    for (size_t i = 0; i < plan->count; i++) total += strlen(plan->tensors[i].name);
    char *lower = malloc(total + 1);
    widen_status st = lower ? WIDEN_OK : NOMEM();
    for (size_t i = 0, off = 0; i < plan->count && !st; i++) {
        const char *name = plan->tensors[i].name;
        size_t len = strlen(name), existing;
        const char *why = !len ? "it is empty (its member would be '.npy')"
                        : len > 65535 - 4 ? "it is longer than a zip member name can be"
                        : !utf8_valid((const unsigned char *)name, len) ? "it is not UTF-8, as zip member names are"
                        : name[0] == '/' ? "it is an absolute path (an extracting tool would write outside its folder)"
                        : has_parent_component(name) ? "it has a '..' component (an extracting tool would write outside "
                                                       "its folder)"
                        : NULL;
        if (why) {
            st = widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' cannot be an .npz member name: %s", path, name, why);
            break;
        }
        char *key = lower + off;
        for (size_t k = 0; k < len; k++) key[k] = name[k] >= 'A' && name[k] <= 'Z' ? (char)(name[k] - 'A' + 'a') : name[k];
        off += len;
        int r = widen_table_put(&folded, key, len, i, &existing);
        if (r < 0 || widen_table_put(&exact, name, len, i, NULL) < 0) st = NOMEM();
        else if (r == 0)
            st = widen_fail(err, WIDEN_EUSAGE, "%s: tensors '%s' and '%s' differ only in case: zip readers that look "
                            "names up ignoring case (miniz, widen) could not tell their .npz members apart", path,
                            plan->tensors[existing].name, name);
    }
    /* np.load looks a key up as a member name first, then with ".npy" added: a tensor 'x.npy' would
     * be answered with tensor 'x' */
    for (size_t i = 0; i < plan->count && !st; i++) {
        const char *name = plan->tensors[i].name;
        size_t len = strlen(name), other;
        if (len > 4 && strcmp(name + len - 4, ".npy") == 0 && widen_table_get(&exact, name, len - 4, &other))
            st = widen_fail(err, WIDEN_EUSAGE, "%s: tensors '%s' and '%s' cannot both be in an .npz: np.load(...)['%s'] "
                            "would return '%s'", path, name, plan->tensors[other].name, name, plan->tensors[other].name);
    }
    widen_table_free(&exact);
    widen_table_free(&folded);
    free(lower);
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* The .npy header, as numpy.lib.format._write_array_header writes it                              */

/* Into out (>= WIDEN_NPY_HEADER_MAX bytes); returns its length. Version 1.0, or 2.0 where the header
 * would not fit a 16-bit length (never, for 16 dimensions or fewer; kept as NumPy does it). */
static size_t npy_header(const widen_plan_tensor *p, unsigned char *out)
{
    char text[WIDEN_NPY_HEADER_MAX];
    int n = snprintf(text, sizeof text, "{'descr': '%s', 'fortran_order': False, 'shape': (", npy_descr(p->dtype));
    for (int d = 0; d < p->rank; d++)
        n += snprintf(text + n, sizeof text - (size_t)n, "%s%llu", d ? ", " : "", (unsigned long long)p->shape[d]);
    n += snprintf(text + n, sizeof text - (size_t)n, "%s), }", p->rank == 1 ? "," : "");
    if (p->rank > 0) {
        int digits = snprintf(NULL, 0, "%llu", (unsigned long long)p->shape[0]);
        for (int k = digits; k < GROWTH_AXIS_MAX_DIGITS; k++) text[n++] = ' ';
    }
    size_t hlen = (size_t)n + 1, prefix = 10;
    size_t pad = ARRAY_ALIGN - (prefix + hlen) % ARRAY_ALIGN; /* 64, not 0, when already aligned: NumPy's */
    if (hlen + pad > 65535) {
        prefix = 12;
        pad = ARRAY_ALIGN - (prefix + hlen) % ARRAY_ALIGN;
    }
    memcpy(out, "\x93NUMPY", 6);
    out[6] = prefix == 10 ? 1 : 2;
    out[7] = 0;
    if (prefix == 10) wr16(out + 8, (uint16_t)(hlen + pad));
    else wr32(out + 8, (uint32_t)(hlen + pad));
    memcpy(out + prefix, text, (size_t)n);
    memset(out + prefix + (size_t)n, ' ', pad);
    out[prefix + hlen + pad - 1] = '\n';
    return prefix + hlen + pad;
}

/* ---------------------------------------------------------------------------------------------- */
/* CRC-32 of a member whose data was copied inside the kernel: the header's CRC extended by the
 * data's, computed apart (crc(A || B) from crc(A), crc(B) and |B|, in GF(2) modulo the CRC
 * polynomial, bit-reflected as the CRC itself). */

static uint32_t gf2_multiply(uint32_t a, uint32_t b)
{
    uint32_t product = 0;
    for (uint32_t bit = 1u << 31; bit; bit >>= 1) {
        if (a & bit) product ^= b;
        b = b & 1 ? (b >> 1) ^ 0xedb88320u : b >> 1; /* b times x */
    }
    return product;
}

static uint32_t crc32_extend(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    uint32_t power = 1u << 30, shift = 1u << 31; /* x, and x^0 */
    for (uint64_t bits = len_b << 3; bits; bits >>= 1) { /* x^(8 len_b) by squaring */
        if (bits & 1) shift = gf2_multiply(shift, power);
        power = gf2_multiply(power, power);
    }
    return gf2_multiply(shift, crc_a) ^ crc_b;
}

/* ---------------------------------------------------------------------------------------------- */
/* The archive, streamed: per member a local header whose CRC is patched in once its data is past,
 * the .npy header, the data from the executor; then the central directory.                      */

typedef struct npz_sink {
    const widen_checkpoint *ckpt;
    widen_output *out;
    const widen_plan *plan;
    widen_npz_member *members; /* per plan item */
    size_t begun;              /* members begun */
    uint32_t crc;              /* of the open member so far */
    unsigned char *scratch;    /* member_header's bytes */
    size_t scratch_cap;
} npz_sink;

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

/* Member `index`'s bytes in front of its array, for a local header at `offset`: the local header (its
 * CRC-32 left zero), the name, the ZIP64 extra field and the .npy header, into s->scratch; records
 * where its parts lie in s->members[index] and the .npy header's CRC-32 in *npy_crc. Returns the
 * length, 0 when out of memory. */
static size_t member_header(npz_sink *s, size_t index, uint64_t offset, uint32_t *npy_crc)
{
    const widen_plan_tensor *p = &s->plan->tensors[index];
    widen_npz_member *m = &s->members[index];
    unsigned char npy[WIDEN_NPY_HEADER_MAX];
    size_t npy_len = npy_header(p, npy), nlen = strlen(p->name), name_len = nlen + 4;
    size_t len = 30 + name_len + 20 + npy_len;
    if (len > s->scratch_cap) {
        unsigned char *grown = realloc(s->scratch, len);
        if (!grown) return 0;
        s->scratch = grown, s->scratch_cap = len;
    }
    uint64_t size = npy_len + p->nbytes;
    int big = size > ZIP64_LIMIT;
    m->header_offset = offset;
    m->npy_offset = m->header_offset + 30 + name_len + 20;
    m->data_offset = m->npy_offset + npy_len;
    m->size = size;
    m->flags = is_ascii(p->name) ? 0 : 0x800; /* zipfile marks a name it had to encode as UTF-8 */
    unsigned char *local = s->scratch, *extra = local + 30 + name_len;
    memset(local, 0, 30);
    wr32(local, 0x04034b50);
    wr16(local + 4, big ? 45 : 20);
    wr16(local + 6, m->flags);
    wr16(local + 10, DOS_TIME);
    wr16(local + 12, DOS_DATE);
    wr32(local + 18, big ? 0xffffffffu : (uint32_t)size);
    wr32(local + 22, big ? 0xffffffffu : (uint32_t)size);
    wr16(local + 26, (uint16_t)name_len);
    wr16(local + 28, 20);
    memcpy(local + 30, p->name, nlen);
    memcpy(local + 30 + nlen, ".npy", 4);
    wr16(extra, 0x0001); /* ZIP64 (force_zip64=True): sizes */
    wr16(extra + 2, 16);
    wr64(extra + 4, size);
    wr64(extra + 12, size);
    memcpy(extra + 20, npy, npy_len);
    *npy_crc = libdeflate_crc32(0, npy, npy_len);
    return len;
}

static widen_status member_begin(npz_sink *s, size_t index, widen_error *err)
{
    widen_output *o = s->out;
    size_t len = member_header(s, index, o->position, &s->crc);
    widen_status st = len ? o->write(o, s->scratch, 14, err) : NOMEM();
    if (!st) st = o->reserve(o, 4, err); /* the CRC, patched in by member_end (a comparison skips it until then) */
    if (!st) st = o->write(o, s->scratch + 18, len - 18, err);
    return st;
}

static widen_status member_end(npz_sink *s, size_t index, widen_error *err)
{
    widen_npz_member *m = &s->members[index];
    unsigned char crc[4];
    m->crc = s->crc;
    wr32(crc, s->crc);
    return s->out->patch(s->out, m->header_offset + 14, crc, 4, err);
}

/* Members up to and including `index` begun (empty tensors get no sink call of their own). */
static widen_status begin_through(npz_sink *s, size_t index, widen_error *err)
{
    while (s->begun <= index) {
        widen_status st;
        if (s->begun > 0 && (st = member_end(s, s->begun - 1, err))) return st;
        if ((st = member_begin(s, s->begun, err))) return st;
        s->begun++;
    }
    return WIDEN_OK;
}

static widen_status sink_member(void *user, size_t index, uint64_t offset, const void *data, size_t len, widen_error *err)
{
    (void)offset;
    npz_sink *s = user;
    widen_status st = begin_through(s, index, err);
    if (st) return st;
    s->crc = libdeflate_crc32(s->crc, data, len);
    return s->out->write(s->out, data, len, err);
}

/* An untouched tensor: copied inside the kernel (sink_member_copied gets its CRC). */
static widen_status sink_member_copy(void *user, size_t index, uint64_t offset, uint64_t in_offset, size_t len,
                                     widen_error *err)
{
    (void)offset;
    npz_sink *s = user;
    widen_status st = begin_through(s, index, err);
    if (st) return st;
    return s->out->copy ? s->out->copy(s->out, widen_checkpoint_fd(s->ckpt), in_offset, len, err) : WIDEN_EUSAGE;
}

static widen_status sink_member_copied(void *user, size_t index, uint64_t len, uint32_t crc, widen_error *err)
{
    (void)index, (void)err;
    npz_sink *s = user;
    s->crc = crc32_extend(s->crc, crc, len);
    return WIDEN_OK;
}

/* The members of an output that takes bytes at offsets: every member's place is known before a byte
 * of data is written (stored members, whose sizes are the plan's), so the arrays go from several
 * threads at once (widen_write_tensors_at, which also gives each array's CRC-32), and the local
 * headers after them, each with the CRC-32 of its .npy header and array. The bytes are the streamed
 * writer's. */
static widen_status members_at_offsets(npz_sink *s, widen_plan *plan, const widen_exec_options *eo, widen_error *err)
{
    widen_output *out = s->out;
    uint64_t *at = malloc(plan->count * sizeof *at), end = out->position;
    uint32_t *crc = malloc(plan->count * sizeof *crc), npy_crc;
    widen_status st = at && crc ? WIDEN_OK : NOMEM();
    for (size_t k = 0; k < plan->count && !st; k++) {
        if (!member_header(s, k, end, &npy_crc)) st = NOMEM();
        else at[k] = s->members[k].data_offset, end = at[k] + plan->tensors[k].nbytes;
    }
    if (!st) st = widen_write_tensors_at(s->ckpt, plan, at, crc, out, eo, err);
    for (size_t k = 0; k < plan->count && !st; k++) {
        widen_npz_member *m = &s->members[k];
        size_t len = member_header(s, k, m->header_offset, &npy_crc);
        if (!len) {
            st = NOMEM();
            break;
        }
        m->crc = crc32_extend(npy_crc, crc[k], plan->tensors[k].nbytes);
        wr32(s->scratch + 14, m->crc);
        st = out->write_at(out, m->header_offset, s->scratch, len, err);
    }
    if (!st) out->position = end;
    free(at);
    free(crc);
    return st;
}

/* zipfile's _write_end_record: the central directory (ZIP64 fields only where a value is past
 * ZIP64_LIMIT), the ZIP64 end record and locator only where the archive needs them, the end record
 * and its comment. */
static widen_status write_directory(npz_sink *s, const char *comment, widen_npz_layout *layout, widen_error *err)
{
    const widen_plan *plan = s->plan;
    size_t total = 56 + 20 + 22 + (comment ? strlen(comment) : 0);
    for (size_t i = 0; i < plan->count; i++) total += 46 + strlen(plan->tensors[i].name) + 4 + 28;
    unsigned char *buf = calloc(1, total), *p = buf;
    if (!buf) return NOMEM();
    uint64_t cd_offset = s->out->position;
    for (size_t i = 0; i < plan->count; i++) {
        const widen_npz_member *m = &s->members[i];
        const char *name = plan->tensors[i].name;
        size_t nlen = strlen(name) + 4, xlen = 0;
        int big = m->size > ZIP64_LIMIT, far = m->header_offset > ZIP64_LIMIT;
        unsigned char *x = p + 46 + nlen;
        if (big) wr64(x + 4 + xlen, m->size), wr64(x + 12 + xlen, m->size), xlen += 16;
        if (far) wr64(x + 4 + xlen, m->header_offset), xlen += 8;
        if (xlen) {
            wr16(x, 0x0001);
            wr16(x + 2, (uint16_t)xlen);
            xlen += 4;
        }
        uint16_t version = big || far ? 45 : 20;
        wr32(p, 0x02014b50);
        wr16(p + 4, (uint16_t)(3 << 8 | version)); /* made by: Unix, as Python on Linux says */
        wr16(p + 6, version);
        wr16(p + 8, m->flags);
        wr16(p + 12, DOS_TIME);
        wr16(p + 14, DOS_DATE);
        wr32(p + 16, m->crc);
        wr32(p + 20, big ? 0xffffffffu : (uint32_t)m->size);
        wr32(p + 24, big ? 0xffffffffu : (uint32_t)m->size);
        wr16(p + 28, (uint16_t)nlen);
        wr16(p + 30, (uint16_t)xlen);
        wr32(p + 38, EXTERNAL_ATTR);
        wr32(p + 42, far ? 0xffffffffu : (uint32_t)m->header_offset);
        memcpy(p + 46, name, nlen - 4);
        memcpy(p + 46 + nlen - 4, ".npy", 4);
        p += 46 + nlen + xlen;
    }
    uint64_t cd_size = (uint64_t)(p - buf), count = plan->count, end = cd_offset + cd_size;
    if (count > 0xffff || cd_offset > ZIP64_LIMIT || cd_size > ZIP64_LIMIT) {
        wr32(p, 0x06064b50);
        wr64(p + 4, 44);
        wr16(p + 12, 45);
        wr16(p + 14, 45);
        wr64(p + 24, count);
        wr64(p + 32, count);
        wr64(p + 40, cd_size);
        wr64(p + 48, cd_offset);
        wr32(p + 56, 0x07064b50);
        wr64(p + 56 + 8, end);
        wr32(p + 56 + 16, 1);
        p += 76;
    }
    size_t clen = comment ? strlen(comment) : 0;
    wr32(p, 0x06054b50);
    wr16(p + 8, (uint16_t)(count > 0xffff ? 0xffff : count));
    wr16(p + 10, (uint16_t)(count > 0xffff ? 0xffff : count));
    wr32(p + 12, (uint32_t)(cd_size > 0xffffffffu ? 0xffffffffu : cd_size));
    wr32(p + 16, (uint32_t)(cd_offset > 0xffffffffu ? 0xffffffffu : cd_offset));
    wr16(p + 20, (uint16_t)clen);
    memcpy(p + 22, comment ? comment : "", clen);
    p += 22 + clen;
    if (layout) {
        layout->directory_offset = cd_offset;
        layout->comment_offset = s->out->position + (uint64_t)(p - buf) - clen;
    }
    widen_status st = s->out->write(s->out, buf, (size_t)(p - buf), err);
    free(buf);
    return st;
}

const char *widen_npz_comment_for(const char *provenance)
{
    return provenance && strlen(provenance) <= WIDEN_NPZ_COMMENT_MAX ? provenance : NULL;
}

static int by_input_order(const void *a, const void *b)
{
    const widen_plan_tensor *x = a, *y = b;
    return x->in < y->in ? -1 : x->in > y->in;
}

widen_status widen_npz_write(const widen_checkpoint *ckpt, widen_plan *plan, const char *provenance, widen_output *out,
                             const widen_exec_options *options, widen_npz_layout *layout, widen_error *err)
{
    widen_status st = widen_npz_check(ckpt, plan, err);
    if (st) return st;
    if (!out->reserve || !out->patch)
        return widen_fail(err, WIDEN_EUSAGE, "%s: an .npz is written to a file, which widen can go back in", ckpt->path);
    /* the input's order (np.savez's order for an .npz input): plan items point into ckpt->tensors */
    if (plan->count) qsort(plan->tensors, plan->count, sizeof *plan->tensors, by_input_order);
    npz_sink s = {.ckpt = ckpt, .out = out, .plan = plan};
    if (!(s.members = calloc(plan->count + 1, sizeof *s.members))) return NOMEM();
    if (out->write_at && out->copy_at && options->threads > 1 && plan->count) {
        st = members_at_offsets(&s, plan, options, err);
    } else {
        widen_exec_options eo = *options;
        eo.copy = sink_member_copy;
        eo.copy_one_item = 1;
        eo.copied = sink_member_copied;
        st = widen_execute(ckpt, plan, &eo, sink_member, &s, err);
        if (!st && plan->count) st = begin_through(&s, plan->count - 1, err);
        if (!st && plan->count) st = member_end(&s, plan->count - 1, err);
    }
    if (!st) st = write_directory(&s, widen_npz_comment_for(provenance), layout, err);
    if (!st && layout) {
        layout->members = s.members;
        layout->count = plan->count;
        s.members = NULL;
    }
    free(s.members);
    free(s.scratch);
    return st;
}

void widen_npz_layout_free(widen_npz_layout *layout)
{
    free(layout->members);
    memset(layout, 0, sizeof *layout);
}

int widen_npz_comment(const widen_checkpoint *ckpt, const char **text, size_t *len)
{
    const widen_mapping file = widen_checkpoint_file(ckpt); /* the archive, not its inflated arrays */
    const unsigned char *m = file.data;
    if (file.size < 22) return 0;
    uint64_t floor = file.size > 22 + 65535 ? file.size - 22 - 65535 : 0;
    /* the end record the zip reader takes (the last one), and every byte after it: a length field
     * that disagrees is then a difference verify finds in the end record, not a missing record */
    for (uint64_t at = file.size - 22;; at--) {
        if (memcmp(m + at, "PK\x05\x06", 4) == 0) {
            *text = (const char *)m + at + 22;
            *len = (size_t)(file.size - at - 22);
            return 1;
        }
        if (at == floor) return 0;
    }
}
