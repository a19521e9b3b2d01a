/* zip.c: reading and writing the ZIP archives of torch.save: stored entries, ZIP64, 64-byte aligned
 * data, data descriptors. CRCs come from libdeflate (PCLMUL-fast where the CPU has it). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libdeflate.h>

#include "zip.h"

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

enum { EOCD = 0x06054b50, EOCD64 = 0x06064b50, LOCATOR64 = 0x07064b50, CENTRAL = 0x02014b50, LOCAL = 0x04034b50,
       DESCRIPTOR = 0x08074b50 };

#define BAD(...) widen_fail(err, WIDEN_EFORMAT, __VA_ARGS__)

static int by_offset(const void *a, const void *b)
{
    const widen_zip_entry *x = a, *y = b;
    return x->data_offset < y->data_offset ? -1 : x->data_offset > y->data_offset;
}

/* ZIP64 extended information: the fields whose 32-bit value is all ones, in order. */
static void zip64_extra(const unsigned char *extra, size_t len, uint64_t *usize, uint64_t *csize, uint64_t *offset)
{
    for (size_t at = 0; at + 4 <= len;) {
        uint16_t id = rd16(extra + at), n = rd16(extra + at + 2);
        if (at + 4 + n > len) return;
        if (id == 0x0001) {
            const unsigned char *p = extra + at + 4, *end = p + n;
            if (*usize == 0xffffffffu && p + 8 <= end) *usize = rd64(p), p += 8;
            if (*csize == 0xffffffffu && p + 8 <= end) *csize = rd64(p), p += 8;
            if (*offset == 0xffffffffu && p + 8 <= end) *offset = rd64(p);
            return;
        }
        at += 4 + (size_t)n;
    }
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* The 30 bytes of the local header at `offset` (below size - 30): read from the file, or the mapping. */
static widen_status local_header(const widen_mapping *file, uint64_t offset, unsigned char out[30], const char *path,
                                 widen_error *err)
{
    if (file->fd < 0) {
        memcpy(out, file->data + offset, 30);
        return WIDEN_OK;
    }
    size_t got = 0;
    while (got < 30) {
        ssize_t n = pread(file->fd, out + got, 30 - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return widen_fail(err, WIDEN_EIO, "%s: cannot read: %s", path, n < 0 ? strerror(errno) : "it got shorter");
        got += (size_t)n;
    }
    return WIDEN_OK;
}

widen_status widen_zip_read(const widen_mapping *file, const char *path, widen_zip *zip, widen_error *err)
{
    const unsigned char *m = file->data;
    uint64_t size = file->size;
    memset(zip, 0, sizeof *zip);
    if (size < 22) return BAD("%s: zip archive too short for an end record", path);
    uint64_t eocd = size - 22, floor = size > 22 + 65535 ? size - 22 - 65535 : 0;
    while (rd32(m + eocd) != EOCD) {
        if (eocd == floor) return BAD("%s: zip archive without an end of central directory record", path);
        eocd--;
    }
    uint64_t count = rd16(m + eocd + 10), cd_size = rd32(m + eocd + 12), cd_offset = rd32(m + eocd + 16);
    /* one disk only, as torch's reader (miniz) requires: no disk numbers, as many entries on it as in all */
    if (rd16(m + eocd + 4) || rd16(m + eocd + 6) || rd16(m + eocd + 8) != rd16(m + eocd + 10))
        return BAD("%s: zip: a multi-disk archive", path);
    if (eocd >= 20 && rd32(m + eocd - 20) == LOCATOR64) {
        uint64_t rec = rd64(m + eocd - 20 + 8);
        if (size < 56 || rec > size - 56 || rd32(m + rec) != EOCD64) return BAD("%s: zip: bad ZIP64 end record", path);
        if (rd32(m + eocd - 20 + 4) || rd32(m + eocd - 20 + 16) != 1 || rd32(m + rec + 16) || rd32(m + rec + 20) ||
            rd64(m + rec + 24) != rd64(m + rec + 32))
            return BAD("%s: zip: a multi-disk archive", path);
        count = rd64(m + rec + 32);
        cd_size = rd64(m + rec + 40);
        cd_offset = rd64(m + rec + 48);
    }
    if (cd_offset > size || cd_size > size - cd_offset) return BAD("%s: zip: central directory runs past the end of the file", path);
    if (count > cd_size / 46) return BAD("%s: zip: %llu entries cannot fit in the central directory", path, (unsigned long long)count);
    zip->entries = calloc(count + 1, sizeof *zip->entries);
    if (!zip->entries) return widen_fail(err, WIDEN_EIO, "out of memory");
    uint64_t at = cd_offset, end = cd_offset + cd_size, names = 0;
    widen_status st = WIDEN_OK;
    for (uint64_t i = 0; i < count && !st; i++) {
        if (at + 46 > end || rd32(m + at) != CENTRAL) {
            st = BAD("%s: zip: central directory entry %llu is damaged", path, (unsigned long long)i);
            break;
        }
        uint16_t flags = rd16(m + at + 8), method = rd16(m + at + 10), nlen = rd16(m + at + 28), xlen = rd16(m + at + 30),
                 clen = rd16(m + at + 32);
        uint64_t csize = rd32(m + at + 20), usize = rd32(m + at + 24), local = rd32(m + at + 42);
        if (at + 46 + nlen + xlen + clen > end) {
            st = BAD("%s: zip: central directory entry %llu runs past the directory", path, (unsigned long long)i);
            break;
        }
        const char *name = (const char *)m + at + 46;
        if (memchr(name, '\0', nlen)) {
            st = BAD("%s: zip entry %llu has a NUL byte in its name (readers would cut the name there)", path,
                     (unsigned long long)i);
            break;
        }
        zip64_extra(m + at + 46 + nlen, xlen, &usize, &csize, &local);
        widen_zip_entry *e = &zip->entries[zip->count];
        if (!(e->name = strndup(name, nlen))) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            break;
        }
        zip->count++;
        names += nlen;
        e->method = method;
        /* what miniz refuses: encryption (1, 0x40), patch data (0x20), a masked directory (0x2000),
         * another disk; and what it takes for a directory (a '/' at the end, or the DOS directory
         * attribute), whose data it never reads */
        e->directory = (nlen && name[nlen - 1] == '/') || (rd32(m + at + 38) & 0x10);
        if (flags & (1 | 0x40 | 0x2000)) st = BAD("%s: zip entry '%s' is encrypted", path, e->name);
        else if (flags & 0x20) st = BAD("%s: zip entry '%s' holds patch data", path, e->name);
        else if (rd16(m + at + 34)) st = BAD("%s: zip entry '%s' is on another disk", path, e->name);
        else if (method == 0 && csize != usize) st = BAD("%s: zip entry '%s': stored sizes disagree", path, e->name);
        unsigned char h[30];
        if (!st && (size < 30 || local > size - 30)) st = BAD("%s: zip entry '%s': bad local header", path, e->name);
        if (!st && !(st = local_header(file, local, h, path, err)) && rd32(h) != LOCAL)
            st = BAD("%s: zip entry '%s': bad local header", path, e->name);
        if (st) break;
        e->header_offset = local;
        e->data_offset = local + 30 + rd16(h + 26) + rd16(h + 28);
        e->size = csize;
        e->usize = usize;
        e->crc = rd32(m + at + 16);
        if (e->data_offset > size || e->size > size - e->data_offset)
            st = BAD("%s: zip entry '%s' runs past the end of the file", path, e->name);
        at += 46 + (uint64_t)nlen + xlen + clen;
    }
    if (!st) { /* no two entries' data may overlap */
        widen_zip_entry *sorted = malloc((zip->count + 1) * sizeof *sorted);
        if (!sorted) st = widen_fail(err, WIDEN_EIO, "out of memory");
        else {
            memcpy(sorted, zip->entries, zip->count * sizeof *sorted);
            qsort(sorted, zip->count, sizeof *sorted, by_offset);
            for (size_t i = 1; i < zip->count && !st; i++)
                if (sorted[i - 1].data_offset + sorted[i - 1].size > sorted[i].data_offset)
                    st = BAD("%s: zip entries '%s' and '%s' overlap", path, sorted[i - 1].name, sorted[i].name);
            free(sorted);
        }
    }
    if (!st && !(zip->lower = malloc(names + 1))) st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0, off = 0; i < zip->count && !st; i++) {
        const char *name = zip->entries[i].name;
        size_t len = strlen(name), existing;
        char *key = zip->lower + off;
        for (size_t k = 0; k < len; k++) key[k] = lower(name[k]);
        off += len;
        int r = widen_table_put(&zip->by_name, key, len, i, &existing);
        if (r < 0) st = widen_fail(err, WIDEN_EIO, "out of memory");
        else if (r == 0)
            st = BAD("%s: zip entries '%s' and '%s' have the same name (torch's reader, ignoring case, could read "
                     "either)", path, zip->entries[existing].name, name);
    }
    if (st) widen_zip_free(zip);
    return st;
}

void widen_zip_free(widen_zip *zip)
{
    for (size_t i = 0; i < zip->count; i++) free(zip->entries[i].name);
    free(zip->entries);
    free(zip->lower);
    widen_table_free(&zip->by_name);
    memset(zip, 0, sizeof *zip);
}

const widen_zip_entry *widen_zip_find(const widen_zip *zip, const char *name, size_t len)
{
    char small[256] = {0}, *key = len < sizeof small ? small : malloc(len + 1);
    if (!key) return NULL;
    for (size_t k = 0; k < len; k++) key[k] = lower(name[k]);
    size_t index;
    int found = widen_table_get(&zip->by_name, key, len, &index);
    if (key != small) free(key);
    return found ? &zip->entries[index] : NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writing                                                                                          */

static void wr16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void wr32(unsigned char *p, uint32_t v) { wr16(p, (uint16_t)v), wr16(p + 2, (uint16_t)(v >> 16)); }
static void wr64(unsigned char *p, uint64_t v) { wr32(p, (uint32_t)v), wr32(p + 4, (uint32_t)(v >> 32)); }

/* DOS date and time of 1980-01-01 00:00: fixed, so archives are reproducible. */
enum { DOS_TIME = 0, DOS_DATE = (0 << 9) | (1 << 5) | 1 };

size_t widen_zip_begin(widen_zip_writer *w, const char *name, int64_t congruent_to, unsigned char *out, size_t out_size)
{
    size_t nlen = strlen(name), base = 30 + nlen;
    if (!w->alignment) w->alignment = 64;
    size_t pad = (w->alignment - (w->offset + base + 4) % w->alignment) % w->alignment; /* FB block: 4 + pad */
    if (congruent_to >= 0)
        pad = (size_t)(((uint64_t)congruent_to + WIDEN_CLONE_BLOCK - (w->offset + base + 4) % WIDEN_CLONE_BLOCK) %
                       WIDEN_CLONE_BLOCK);
    size_t total = base + 4 + pad;
    if (total > out_size) return 0;
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        widen_zip_entry *grown = realloc(w->entries, cap * sizeof *grown);
        if (!grown) return 0;
        w->entries = grown;
        w->cap = cap;
    }
    widen_zip_entry *e = &w->entries[w->count];
    if (!(e->name = strdup(name))) return 0;
    w->count++;
    memset(out, 0, total);
    wr32(out, LOCAL);
    wr16(out + 4, 20);     /* version needed */
    wr16(out + 6, 1 << 3); /* sizes and CRC in a data descriptor */
    wr16(out + 8, 0);      /* stored */
    wr16(out + 10, DOS_TIME);
    wr16(out + 12, DOS_DATE);
    wr16(out + 26, (uint16_t)nlen);
    wr16(out + 28, (uint16_t)(4 + pad));
    memcpy(out + 30, name, nlen);
    out[base] = 'F', out[base + 1] = 'B';
    wr16(out + base + 2, (uint16_t)pad);
    memset(out + base + 4, 'Z', pad);
    e->header_offset = w->offset;
    e->data_offset = w->offset + total;
    w->offset += total;
    w->crc = 0;
    w->size = 0;
    return total;
}

void widen_zip_data(widen_zip_writer *w, const void *data, size_t len)
{
    w->crc = libdeflate_crc32(w->crc, data, len);
    w->size += len;
    w->offset += len;
}

void widen_zip_copied(widen_zip_writer *w, uint64_t len, uint32_t crc)
{
    w->crc = crc;
    w->size = len;
    w->offset += len;
}

size_t widen_zip_end(widen_zip_writer *w, unsigned char *out)
{
    widen_zip_entry *e = &w->entries[w->count - 1];
    e->size = w->size;
    e->crc = w->crc;
    if (w->size == 0) return 0; /* torch's writer puts no descriptor after an empty record */
    wr32(out, DESCRIPTOR);
    wr32(out + 4, w->crc);
    wr64(out + 8, w->size);
    wr64(out + 16, w->size);
    w->offset += 24;
    return 24;
}

widen_status widen_zip_finish(widen_zip_writer *w, unsigned char **out, size_t *len, widen_error *err)
{
    size_t total = 56 + 20 + 22;
    for (size_t i = 0; i < w->count; i++) total += 46 + strlen(w->entries[i].name) + 28;
    unsigned char *buf = calloc(1, total), *p = buf;
    if (!buf) return widen_fail(err, WIDEN_EIO, "out of memory");
    uint64_t cd_offset = w->offset;
    for (size_t i = 0; i < w->count; i++) {
        const widen_zip_entry *e = &w->entries[i];
        size_t nlen = strlen(e->name);
        wr32(p, CENTRAL);
        wr16(p + 4, 45); /* made by: 4.5 (ZIP64) */
        wr16(p + 6, 45);
        wr16(p + 8, 1 << 3);
        wr16(p + 12, DOS_TIME);
        wr16(p + 14, DOS_DATE);
        wr32(p + 16, e->crc);
        wr32(p + 20, 0xffffffffu);
        wr32(p + 24, 0xffffffffu);
        wr16(p + 28, (uint16_t)nlen);
        wr16(p + 30, 28);
        wr32(p + 42, 0xffffffffu);
        memcpy(p + 46, e->name, nlen);
        unsigned char *x = p + 46 + nlen; /* ZIP64 extra: sizes and local header offset */
        wr16(x, 0x0001);
        wr16(x + 2, 24);
        wr64(x + 4, e->size);
        wr64(x + 12, e->size);
        wr64(x + 20, e->header_offset);
        p += 46 + nlen + 28;
    }
    uint64_t cd_size = (uint64_t)(p - buf), eocd64 = cd_offset + cd_size;
    wr32(p, EOCD64);
    wr64(p + 4, 44);
    wr16(p + 12, 45);
    wr16(p + 14, 45);
    wr64(p + 24, w->count);
    wr64(p + 32, w->count);
    wr64(p + 40, cd_size);
    wr64(p + 48, cd_offset);
    p += 56;
    wr32(p, LOCATOR64);
    wr64(p + 8, eocd64);
    wr32(p + 16, 1);
    p += 20;
    wr32(p, EOCD);
    wr16(p + 8, 0xffff);
    wr16(p + 10, 0xffff);
    wr32(p + 12, 0xffffffffu);
    wr32(p + 16, 0xffffffffu);
    p += 22;
    *out = buf;
    *len = (size_t)(p - buf);
    w->offset += *len;
    return WIDEN_OK;
}

void widen_zip_writer_free(widen_zip_writer *w)
{
    for (size_t i = 0; i < w->count; i++) free(w->entries[i].name);
    free(w->entries);
    memset(w, 0, sizeof *w);
}

static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!k || i + k > n || (k == 2 && c < 0xc2)) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if (k == 3 && ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0))) return 0;
        if (k == 4 && ((c == 0xf0 && s[i + 1] < 0x90) || c > 0xf4 || (c == 0xf4 && s[i + 1] >= 0x90))) return 0;
        i += k;
    }
    return 1;
}

widen_status widen_zip_check_zipfile(const unsigned char *m, uint64_t size, const char *path, const widen_zip *zip,
                                     widen_error *err)
{
    /* where zipfile finds the directory: from the end record's place, less the directory's size (and
     * the ZIP64 records' fixed sizes), not from the offsets the records state; an archive with bytes
     * before it (concatenated) or between the directory and the end records is read at other offsets */
    uint64_t eocd = size - 22, floor = size > 22 + 65535 ? size - 22 - 65535 : 0;
    while (eocd > floor && rd32(m + eocd) != EOCD) eocd--;
    uint64_t cd_size = rd32(m + eocd + 12), cd_offset = rd32(m + eocd + 16), cd_end = eocd;
    if (eocd >= 20 && rd32(m + eocd - 20) == LOCATOR64) {
        uint64_t rec = rd64(m + eocd - 20 + 8);
        if (eocd < 76 || rec != eocd - 76)
            return BAD("%s: zip: the ZIP64 end record is not where Python's zipfile reads it (just before its "
                       "locator)", path);
        cd_size = rd64(m + rec + 40);
        cd_offset = rd64(m + rec + 48);
        cd_end = rec;
    }
    if (cd_offset + cd_size != cd_end)
        return BAD("%s: zip: bytes lie between the central directory and the end record, or the archive has bytes "
                   "before it (Python's zipfile shifts every offset by them; widen does not read such archives)", path);
    uint64_t at = cd_offset;
    for (size_t i = 0; i < zip->count; i++) {
        const widen_zip_entry *e = &zip->entries[i];
        uint16_t flags = rd16(m + at + 8), nlen = rd16(m + at + 28), xlen = rd16(m + at + 30), clen = rd16(m + at + 32);
        const unsigned char *name = m + at + 46, *extra = name + nlen;
        int high = 0;
        for (size_t k = 0; k < nlen; k++) high |= name[k] >= 0x80;
        if (high && !(flags & 0x800))
            return BAD("%s: zip entry %zu's name is not marked UTF-8 (Python's zipfile reads it as cp437)", path, i);
        if (high && !utf8_ok(name, nlen)) return BAD("%s: zip entry %zu's name is not valid UTF-8", path, i);
        int zip64 = 0;
        for (size_t x = 0; x + 4 <= xlen;) {
            uint16_t id = rd16(extra + x), n = rd16(extra + x + 2);
            if (x + 4 + n > xlen) return BAD("%s: zip entry '%s': corrupt extra field", path, e->name);
            if (id == 0x0001 && zip64++) return BAD("%s: zip entry '%s': two ZIP64 extra fields", path, e->name);
            x += 4 + (size_t)n;
        }
        if (zip64 && ((rd32(m + at + 24) == 0xffffffffu && e->usize == 0xffffffffu) ||
                      (rd32(m + at + 20) == 0xffffffffu && e->size == 0xffffffffu) ||
                      (rd32(m + at + 42) == 0xffffffffu && e->header_offset == 0xffffffffu)))
            return BAD("%s: zip entry '%s': its ZIP64 extra field lacks a size or offset", path, e->name);
        /* zipfile compares the local header's name with the directory's */
        const unsigned char *local = m + e->header_offset;
        uint16_t lnlen = rd16(local + 26);
        if (lnlen != nlen || e->header_offset + 30 + lnlen > size || memcmp(local + 30, name, nlen) != 0 ||
            ((rd16(local + 6) ^ flags) & 0x800))
            return BAD("%s: zip entry '%s': the local header names another file", path, e->name);
        at += 46 + (uint64_t)nlen + xlen + clen;
    }
    return WIDEN_OK;
}
