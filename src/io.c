/* io.c: whole writes, in-kernel copies, and releasing the pages of a read-only mapping. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io.h"

widen_status widen_write_all(int fd, const void *data, size_t len, const char *target, widen_error *err)
{
    const unsigned char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* a descriptor in non-blocking mode (a stdout a parent set O_NONBLOCK on, a socket with a
             * timeout) that is full: wait until it takes more */
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, -1) >= 0 || errno == EINTR) continue;
        }
        if (n <= 0) return widen_fail(err, WIDEN_EIO, "%s: write failed: %s", target, strerror(n < 0 ? errno : EIO));
        p += n;
        len -= (size_t)n;
    }
    return WIDEN_OK;
}

widen_status widen_write_at(int fd, const void *data, size_t len, uint64_t offset, const char *target, widen_error *err)
{
    const unsigned char *p = data;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return widen_fail(err, WIDEN_EIO, "%s: write failed: %s", target, strerror(n < 0 ? errno : EIO));
        p += n;
        offset += (uint64_t)n;
        len -= (size_t)n;
    }
    return WIDEN_OK;
}

/* Clones [in_offset, in_offset+len) of in_fd to out_offset of fd (all multiples of the block size)
 * with FICLONERANGE; 0 where the file system cannot (another one, no reflink, a pipe): the caller
 * copies instead. */
static int clone_range(int in_fd, uint64_t in_offset, int fd, uint64_t out_offset, uint64_t len)
{
    struct file_clone_range range = {.src_fd = in_fd, .src_offset = in_offset, .src_length = len,
                                     .dest_offset = out_offset};
    return ioctl(fd, FICLONERANGE, &range) == 0;
}

/* Copies to `*at`, moving it on, or to fd's position where `at` is NULL. */
static widen_status copy_range(int in_fd, uint64_t in_offset, int fd, off64_t *at, uint64_t len, const char *target,
                               widen_error *err)
{
    off64_t from = (off64_t)in_offset;
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = copy_file_range(in_fd, &from, fd, at, (size_t)(len - done), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (done == 0 && (n == 0 || errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
                              errno == EBADF))
                return WIDEN_EUSAGE;
            return widen_fail(err, WIDEN_EIO, "%s: %s", target, n < 0 ? strerror(errno)
                              : "the input ended early (it changed while widen read it)");
        }
        done += (uint64_t)n;
    }
    return WIDEN_OK;
}

/* widen_copy_all and widen_copy_at: to `*at` (moved on), or to fd's position where `at` is NULL.
 * Where the output offset is congruent with the input's modulo the block size, the whole blocks
 * between are cloned (XFS, btrfs, OpenZFS, NFS 4.2: no bytes moved, no space used) and only the
 * partial blocks at either end copied; copy_file_range would copy the whole range. */
static widen_status copy_to(int in_fd, uint64_t in_offset, int fd, off64_t *at, uint64_t len, const char *target,
                            widen_copy_counts *counts, widen_error *err)
{
    enum { BLOCK = WIDEN_CLONE_BLOCK, COPY_ALIGN = 2u << 20 };
    off_t out = len < 2 * BLOCK ? -1 : at ? (off_t)*at : lseek(fd, 0, SEEK_CUR);
    uint64_t head = (BLOCK - in_offset % BLOCK) % BLOCK, whole = len > head ? (len - head) / BLOCK * BLOCK : 0;
    widen_status st = WIDEN_OK;
    if (out >= 0 && (uint64_t)out % BLOCK == in_offset % BLOCK && whole) {
        if (head && (st = copy_range(in_fd, in_offset, fd, at, head, target, err))) return st;
        uint64_t past = (uint64_t)out + head + whole;
        if (clone_range(in_fd, in_offset + head, fd, (uint64_t)out + head, whole) &&
            (at ? (*at = (off64_t)past, 1) : lseek(fd, (off_t)past, SEEK_SET) >= 0)) {
            if (counts) counts->copied += head, counts->cloned += whole;
            st = copy_range(in_fd, in_offset + head + whole, fd, at, len - head - whole, target, err);
            if (!st && counts) counts->copied += len - head - whole;
            return st == WIDEN_EUSAGE ? widen_fail(err, WIDEN_EIO, "%s: the kernel copied part of a range and not "
                                                   "the rest", target) : st;
        }
        /* The file system copies (ext4): the rest goes in two calls, split where the output reaches
         * its next COPY_ALIGN boundary. The kernel copies a range in 64 KiB chunks through the page
         * cache; chunks that start on such a boundary fill the output's large folios, as `cp`'s do
         * from offset 0, where chunks that straddle them fill small ones. The bytes are the same
         * and clones are not affected (both pieces start on blocks). On the 2-core VM, kernel 6.18,
         * widening vit_h_14 took 1.24 x cp's time unsplit and 0.94 x split (README,
         * bench/copy_pattern.py). */
        uint64_t from = in_offset + head, rest = len - head, moved = head;
        uint64_t lead = (COPY_ALIGN - ((uint64_t)out + head) % COPY_ALIGN) % COPY_ALIGN;
        if (lead && lead < rest && !(st = copy_range(in_fd, from, fd, at, lead, target, err)))
            from += lead, rest -= lead, moved += lead;
        if (!st) st = copy_range(in_fd, from, fd, at, rest, target, err);
        if (counts) counts->copied += st ? moved : len; /* what a failed copy moved counts too */
        if (st == WIDEN_EUSAGE && moved)
            st = widen_fail(err, WIDEN_EIO, "%s: the kernel copied part of a range and not the rest", target);
        return st;
    }
    st = copy_range(in_fd, in_offset, fd, at, len, target, err);
    if (!st && counts) counts->copied += len;
    return st;
}

widen_status widen_copy_all(int in_fd, uint64_t in_offset, int fd, uint64_t len, const char *target,
                            widen_copy_counts *counts, widen_error *err)
{
    return copy_to(in_fd, in_offset, fd, NULL, len, target, counts, err);
}

widen_status widen_copy_at(int in_fd, uint64_t in_offset, int fd, uint64_t offset, uint64_t len, const char *target,
                           widen_copy_counts *counts, widen_error *err)
{
    off64_t at = (off64_t)offset;
    return copy_to(in_fd, in_offset, fd, &at, len, target, counts, err);
}

enum { OUTPUT_BUFFER = 2u << 20 };

/* `len` bytes for output offset `at` (a file written at offsets says where; a stream writes at its
 * own position, which is `at`) */
static widen_status put(widen_file_output *f, const void *data, size_t len, uint64_t at, widen_error *err)
{
    return f->positional ? widen_write_at(f->fd, data, len, at, f->target, err)
                         : widen_write_all(f->fd, data, len, f->target, err);
}

widen_status widen_file_output_flush(widen_file_output *f, widen_error *err)
{
    widen_status st = f->buffered ? put(f, f->buffer, f->buffered, f->buffered_at, err) : WIDEN_OK;
    f->buffered = 0;
    return st;
}

static widen_status file_write(widen_output *o, const void *data, size_t len, widen_error *err)
{
    widen_file_output *f = (widen_file_output *)o;
    widen_status st = WIDEN_OK;
    if (!f->buffer && !(f->buffer = widen_buffer_alloc(OUTPUT_BUFFER))) return widen_fail(err, WIDEN_EIO, "out of memory");
    /* a writer that wrote at offsets moves the position past those bytes: the buffer ends there */
    if (f->buffered + len > OUTPUT_BUFFER || (f->buffered && f->buffered_at + f->buffered != o->position))
        st = widen_file_output_flush(f, err);
    if (!st && len >= OUTPUT_BUFFER) {
        st = put(f, data, len, o->position, err);
    } else if (!st) {
        if (!f->buffered) f->buffered_at = o->position;
        memcpy(f->buffer + f->buffered, data, len);
        f->buffered += len;
    }
    if (!st) o->position += len, f->counts.written += len;
    return st;
}

static widen_status file_copy(widen_output *o, int in_fd, uint64_t in_offset, uint64_t len, widen_error *err)
{
    widen_file_output *f = (widen_file_output *)o;
    widen_status st = widen_file_output_flush(f, err);
    if (!st) st = f->positional ? widen_copy_at(in_fd, in_offset, f->fd, o->position, len, f->target, &f->counts, err)
                                : widen_copy_all(in_fd, in_offset, f->fd, len, f->target, &f->counts, err);
    if (!st) o->position += len;
    return st;
}

static widen_status file_reserve(widen_output *o, size_t len, widen_error *err)
{
    static const unsigned char zeros[64];
    widen_status st = WIDEN_OK;
    for (size_t n; len && !st; len -= n) {
        n = len < sizeof zeros ? len : sizeof zeros;
        st = file_write(o, zeros, n, err);
    }
    return st;
}

/* Bytes still in the buffer are changed there; the rest, in the file (its offset stays put). */
static widen_status file_patch(widen_output *o, uint64_t at, const void *data, size_t len, widen_error *err)
{
    widen_file_output *f = (widen_file_output *)o;
    uint64_t buffered_from = f->buffered ? f->buffered_at : o->position;
    const unsigned char *p = data;
    if (at > o->position || len > o->position - at) return widen_fail(err, WIDEN_EIO, "%s: a patch past the end", f->target);
    uint64_t buffered_to = buffered_from + f->buffered;
    while (len && (at < buffered_from || at >= buffered_to)) { /* a part not in the buffer: in the file */
        uint64_t part = at < buffered_from && buffered_from - at < len ? buffered_from - at : len;
        ssize_t n = pwrite(f->fd, p, (size_t)part, (off_t)at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return widen_fail(err, WIDEN_EIO, "%s: write failed: %s", f->target, strerror(n < 0 ? errno : EIO));
        p += n, at += (uint64_t)n, len -= (size_t)n;
    }
    if (len > buffered_to - at) return widen_fail(err, WIDEN_EIO, "%s: a patch across the buffer's end", f->target);
    if (len) memcpy(f->buffer + (at - buffered_from), p, len);
    return WIDEN_OK;
}

static widen_status file_write_at(widen_output *o, uint64_t at, const void *data, size_t len, widen_error *err)
{
    widen_file_output *f = (widen_file_output *)o;
    widen_status st = widen_write_at(f->fd, data, len, at, f->target, err);
    if (st) return st;
    pthread_mutex_lock(&f->counts_lock);
    f->counts.written += len;
    pthread_mutex_unlock(&f->counts_lock);
    return WIDEN_OK;
}

static widen_status file_copy_at(widen_output *o, uint64_t at, int in_fd, uint64_t in_offset, uint64_t len,
                                 widen_error *err)
{
    widen_file_output *f = (widen_file_output *)o;
    widen_copy_counts counts = {0};
    pthread_mutex_lock(&f->copy_lock);
    widen_status st = widen_copy_at(in_fd, in_offset, f->fd, at, len, f->target, &counts, err);
    pthread_mutex_unlock(&f->copy_lock);
    pthread_mutex_lock(&f->counts_lock); /* what a failed copy moved counts too, as in file_copy */
    f->counts.cloned += counts.cloned;
    f->counts.copied += counts.copied;
    pthread_mutex_unlock(&f->counts_lock);
    return st;
}

void widen_file_output_init(widen_file_output *out, int fd, const char *target)
{
    *out = (widen_file_output){.base = {.write = file_write, .copy = file_copy, .reserve = file_reserve,
                                        .patch = file_patch},
                               .fd = fd, .target = target};
    pthread_mutex_init(&out->counts_lock, NULL);
    pthread_mutex_init(&out->copy_lock, NULL);
}

void widen_file_output_at_offsets(widen_file_output *out)
{
    out->base.write_at = file_write_at;
    out->base.copy_at = file_copy_at;
    out->positional = 1; /* write and copy too: at the position, which the caller moves past write_at's bytes */
}

void widen_file_output_free(widen_file_output *out)
{
    widen_buffer_free(out->buffer, OUTPUT_BUFFER);
    out->buffer = NULL;
    pthread_mutex_destroy(&out->counts_lock);
    pthread_mutex_destroy(&out->copy_lock);
}

void widen_mapping_release(const widen_mapping *m, uint64_t offset, uint64_t len)
{
    if (m->fd < 0 || !m->data) return; /* not a mapping of ours (a buffer handed in by a fuzzer) */
    /* Whole 2 MiB blocks only, from the start of the block holding `offset`: a fault maps more than
     * the page it hits (fault-around windows, large folios, all inside that block), so reading the
     * start of one item maps the end of the item before it, which that item's release has passed.
     * The block the range ends in is left to the next release (or the file's end): a million
     * four-byte items then cost no million system calls. */
    const uint64_t block = WIDEN_RELEASE_BLOCK;
    uint64_t end = offset + len > m->size ? m->size : offset + len, begin = offset / block * block;
    if (end < m->size) end = end / block * block;
    if (end > begin) madvise((void *)(m->data + begin), (size_t)(end - begin), MADV_DONTNEED);
}

enum { HUGE_PAGE = 2u << 20 };

void *widen_buffer_alloc(size_t len)
{
    /* mapped one huge page over, then trimmed to a huge page boundary */
    unsigned char *m = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    size_t head = (HUGE_PAGE - (uintptr_t)m % HUGE_PAGE) % HUGE_PAGE;
    if (head) munmap(m, head);
    if (HUGE_PAGE - head) munmap(m + head + len, HUGE_PAGE - head);
#ifdef MADV_HUGEPAGE
    madvise(m + head, len, MADV_HUGEPAGE);
#endif
    return m + head;
}

void widen_buffer_free(void *p, size_t len)
{
    if (p) munmap(p, len);
}
