/* zip.h: the subset of ZIP that torch.save archives use: stored entries, ZIP64, data offsets from
 * the local headers. Reading and writing. */
#ifndef WIDEN_ZIP_H
#define WIDEN_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "../error.h"
#include "../io.h"
#include "../table.h"

typedef struct widen_zip_entry {
    char *name;             /* NUL-free */
    uint64_t header_offset; /* of the local header */
    uint64_t data_offset;   /* of the data: after the local header (its own name and extra lengths) */
    uint64_t size;        /* stored bytes (reading: the compressed size) */
    uint64_t usize;       /* reading: the uncompressed size the central directory declares */
    uint32_t crc;
    uint16_t method;      /* 0: stored */
    uint8_t directory;    /* miniz takes it for a directory and reads nothing of it */
} widen_zip_entry;

typedef struct widen_zip {
    widen_zip_entry *entries; /* central directory order */
    size_t count;
    char *lower;          /* every name in ASCII lower case, back to back (the lookup keys) */
    widen_table by_name;  /* lower-case name -> entry */
} widen_zip;

/* Reads the central directory of the mapped file and every entry's local header, as torch's reader
 * (miniz) finds them. Rejects (exit 3) encrypted entries, entries past the end of the file or
 * overlapping, names holding a NUL byte, and two names equal apart from ASCII case (miniz finds
 * records by a case-insensitive binary search, so which of two such entries torch reads is not
 * defined). Compressed entries are listed (method), for the caller to name or refuse. The local
 * headers lie all over the file: where the mapping has a file descriptor they are read with pread,
 * since a page fault for 30 bytes maps and later drops far more (fault-around, large folios). */
widen_status widen_zip_read(const widen_mapping *file, const char *path, widen_zip *zip, widen_error *err);
void widen_zip_free(widen_zip *zip);
/* What Python's zipfile (np.load's reader) checks on top, for an archive widen_zip_read has read: the
 * directory where zipfile computes it (no bytes before the archive or after the directory), names
 * marked UTF-8 where they are not ASCII (else cp437), well-formed extra fields with one ZIP64 field,
 * each local header naming its entry. */
widen_status widen_zip_check_zipfile(const unsigned char *map, uint64_t size, const char *path, const widen_zip *zip,
                                     widen_error *err);
/* The entry called `name` (len bytes), compared as torch compares names: ignoring ASCII case. */
const widen_zip_entry *widen_zip_find(const widen_zip *zip, const char *name, size_t len);

/* Writing: the layout torch.save produces (FORMATS.md). The caller writes each record's bytes
 * between widen_zip_begin and widen_zip_end, in order. */
typedef struct widen_zip_writer {
    uint64_t offset; /* bytes written so far */
    widen_zip_entry *entries;
    size_t count, cap;
    uint32_t crc;       /* of the current record */
    uint64_t size;      /* of the current record */
    unsigned alignment; /* data starts on multiples of this (64) */
} widen_zip_writer;

/* Local header for `name` (padded so the data starts aligned; or, with congruent_to >= 0, so that
 * it starts at congruent_to modulo WIDEN_CLONE_BLOCK), into out (<= 30 + name + 4 + 4095 bytes);
 * returns its length (0: out of memory, or out too small). */
size_t widen_zip_begin(widen_zip_writer *w, const char *name, int64_t congruent_to, unsigned char *out, size_t out_size);
void widen_zip_data(widen_zip_writer *w, const void *data, size_t len);
/* The current record's whole data, `len` bytes with CRC-32 `crc`, written without passing through
 * widen_zip_data (copied inside the kernel). */
void widen_zip_copied(widen_zip_writer *w, uint64_t len, uint32_t crc);
/* Data descriptor of the current record into out (24 bytes); returns its length (0 if empty). */
size_t widen_zip_end(widen_zip_writer *w, unsigned char *out);
/* Central directory, ZIP64 end record and locator, end record: malloc'ed into *out. */
widen_status widen_zip_finish(widen_zip_writer *w, unsigned char **out, size_t *len, widen_error *err);
void widen_zip_writer_free(widen_zip_writer *w);

#endif
