/* io.h: the I/O and mapping helpers every layer above uses: whole writes, in-kernel copies, and
 * dropping the pages of a mapping once they are read. Below the formats and the data path. */
#ifndef WIDEN_IO_H
#define WIDEN_IO_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Writes all of `len` bytes to fd; WIDEN_EIO naming `target` on failure. */
widen_status widen_write_all(int fd, const void *data, size_t len, const char *target, widen_error *err);
/* The same at file offset `offset` (pwrite: fd's position stays). */
widen_status widen_write_at(int fd, const void *data, size_t len, uint64_t offset, const char *target, widen_error *err);

/* A working buffer of `len` bytes (a multiple of 2 MiB) in transparent huge pages where the kernel
 * has them: two page faults for a 4 MiB step instead of a thousand, which on a virtual machine are
 * most of a small job's time. NULL when out of memory; free with widen_buffer_free(p, len). */
void *widen_buffer_alloc(size_t len);
void widen_buffer_free(void *p, size_t len);

/* Output layouts keep a long untouched run (at least WIDEN_CLONE_MIN bytes) at its input offset
 * modulo WIDEN_CLONE_BLOCK, so that file systems that clone share its whole blocks (widen_copy_all). */
enum { WIDEN_CLONE_BLOCK = 4096, WIDEN_CLONE_MIN = 1u << 20 };

/* Bytes an output got: cloned (shared with the input, FICLONERANGE), copied inside the kernel, and
 * written from this process. */
typedef struct widen_copy_counts {
    uint64_t cloned, copied, written;
} widen_copy_counts;

/* Copies `len` bytes at in_offset of in_fd to fd's position inside the kernel: the whole blocks
 * cloned where fd's position is congruent with in_offset modulo 4096 and the file system can, the
 * rest with copy_file_range; adds them to counts (or NULL). WIDEN_EUSAGE, with nothing written,
 * where the kernel cannot copy between these files (another filesystem), WIDEN_EIO naming `target`
 * on failure. */
widen_status widen_copy_all(int in_fd, uint64_t in_offset, int fd, uint64_t len, const char *target,
                            widen_copy_counts *counts, widen_error *err);
/* The same to file offset `offset` of fd, whose position stays: several threads may copy into one
 * file at once (disjoint ranges). */
widen_status widen_copy_at(int in_fd, uint64_t in_offset, int fd, uint64_t offset, uint64_t len, const char *target,
                           widen_copy_counts *counts, widen_error *err);

/* Where a writer's bytes go, front to back: a file (apply), or a comparison with an existing file
 * (verify). `copy` moves input bytes without them passing through this process; NULL, or
 * WIDEN_EUSAGE from it (nothing written), means the caller sends them through `write`. */
typedef struct widen_output widen_output;
struct widen_output {
    widen_status (*write)(widen_output *out, const void *data, size_t len, widen_error *err);
    widen_status (*copy)(widen_output *out, int in_fd, uint64_t in_offset, uint64_t len, widen_error *err);
    /* Optional, both or neither: `reserve` puts `len` bytes whose value is known only later (a zip
     * local header's CRC, before its data); `patch` then gives them, at `at`, before the writer
     * is done. A file writes zeros and goes back; a comparison compares them when patched. */
    widen_status (*reserve)(widen_output *out, size_t len, widen_error *err);
    widen_status (*patch)(widen_output *out, uint64_t at, const void *data, size_t len, widen_error *err);
    /* Optional, both or neither: an output that takes bytes at any offset, from several threads at
     * once (disjoint ranges past what `write` sent), so that a layout known in advance is written
     * in parallel. They leave `position` to the caller, who moves it past them at the end. */
    widen_status (*write_at)(widen_output *out, uint64_t at, const void *data, size_t len, widen_error *err);
    widen_status (*copy_at)(widen_output *out, uint64_t at, int in_fd, uint64_t in_offset, uint64_t len,
                            widen_error *err);
    uint64_t position; /* bytes so far */
};

/* Small writes are gathered (a header record, a tensor of four bytes): one system call per 1 MiB,
 * not one per tensor. widen_file_output_flush before the file is closed. */
typedef struct widen_file_output {
    widen_output base;
    int fd;
    const char *target; /* named in messages */
    unsigned char *buffer;
    size_t buffered;
    uint64_t buffered_at; /* the output offset of buffer[0] */
    widen_copy_counts counts;
    pthread_mutex_t counts_lock; /* write_at and copy_at count from several threads */
    /* copy_at's kernel copies, one at a time: ext4, XFS and tmpfs serialize copies into one file on
     * its inode lock, where a second copier spins; here it sleeps (NFS server-side copies may not
     * serialize: not measured) */
    pthread_mutex_t copy_lock;
    int positional;              /* a file written at offsets: write and copy go to `position` too */
} widen_file_output;

void widen_file_output_init(widen_file_output *out, int fd, const char *target);
/* Gives the output write_at and copy_at: for a file that starts empty at offset 0 (a temporary), where
 * an output offset is the file's. */
void widen_file_output_at_offsets(widen_file_output *out);
widen_status widen_file_output_flush(widen_file_output *out, widen_error *err);
void widen_file_output_free(widen_file_output *out);

/* A read-only mapping of a whole file (fd -1: a buffer handed in by a fuzzer, never released). */
typedef struct widen_mapping {
    const unsigned char *data;
    uint64_t size;
    int fd;
} widen_mapping;

/* Releases the pages of [offset, offset+len) of the mapping from this process: the whole
 * WIDEN_RELEASE_BLOCKs from the one holding `offset` to the one holding the end, which is left to
 * the next release (unless it is the file's last). */
enum { WIDEN_RELEASE_BLOCK = 2u << 20 };
void widen_mapping_release(const widen_mapping *m, uint64_t offset, uint64_t len);

#endif
