/* apply.c: file to file: plan, stream into a temporary file beside the output, fsync, rename; or
 * front to back into a descriptor (a pipe, a socket), with no temporary. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apply.h"
#include "format/torch.h"
#include "write.h"

void widen_apply_options_init(widen_apply_options *o, size_t size)
{
    const widen_apply_options defaults = {.size = sizeof defaults, .fsync = 1};
    widen_options_init(o, size, &defaults, sizeof defaults);
}

void widen_apply_stats_init(widen_apply_stats *s, size_t size)
{
    const widen_apply_stats empty = {.size = sizeof empty};
    widen_options_init(s, size, &empty, sizeof empty);
}

/* Zeroes the counts of the caller's stats (NULL: none), as far as its size goes. */
void widen_apply_stats_reset(widen_apply_stats *stats)
{
    if (stats) memset((unsigned char *)stats + sizeof stats->size, 0,
                      (stats->size < sizeof *stats ? stats->size : sizeof *stats) - sizeof stats->size);
}

/* Adds `counts` to the caller's stats, as far as its size goes. */
void widen_apply_stats_add(widen_apply_stats *stats, const widen_copy_counts *counts)
{
    if (!stats) return;
    widen_apply_stats full = {.size = sizeof full};
    memcpy(&full, stats, stats->size < sizeof full ? stats->size : sizeof full);
    full.bytes_cloned += counts->cloned;
    full.bytes_copied += counts->copied;
    full.bytes_written += counts->written;
    memcpy((unsigned char *)stats + sizeof full.size, (unsigned char *)&full + sizeof full.size,
           (stats->size < sizeof full ? stats->size : sizeof full) - sizeof full.size);
}

/* The first published layout ends with norm_fill_std: no caller's struct is shorter. */
enum { APPLY_OPTIONS_V1 = offsetof(widen_apply_options, norm_fill_std) + sizeof(double) };

widen_status widen_apply_options_read(const widen_apply_options *given, widen_apply_options *out, widen_error *err)
{
    widen_apply_options_init(out, sizeof *out);
    widen_status st = widen_options_read(out, sizeof *out, APPLY_OPTIONS_V1, given, "widen_apply_options", err);
    if (!st && out->stats && out->stats->size < sizeof(widen_apply_stats)) /* the first layout */
        st = widen_fail(err, WIDEN_EUSAGE, "widen_apply_stats.size is %zu, not a size this library knows (%zu): "
                        "fill the struct with widen_apply_stats_init first", out->stats->size, sizeof(widen_apply_stats));
    return st;
}

/* The temporary files and folders of applies in progress, for widen_remove_temporaries. The only
 * process-wide state of the library besides the kernel table: a signal handler has nothing else to
 * go by. Each is registered before it is created, and stays registered, under its final name, from
 * its rename into place until the whole apply is done: a signal at any moment leaves nothing. */
enum { MAX_TEMPORARIES = 16 };
static char temporaries[MAX_TEMPORARIES][4096];
static volatile sig_atomic_t temporary_used[MAX_TEMPORARIES];
static pthread_mutex_t temporaries_lock = PTHREAD_MUTEX_INITIALIZER;

/* Folders: each entry (a path relative to the root) recorded before it is made, removed in reverse
 * (files, then the folders that held them). The entry arrays are allocated up front: the handler
 * reads them as they are. */
enum { MAX_FOLDERS = 4 };
static struct {
    const char *volatile root;
    char **entries;
    size_t capacity;
    volatile sig_atomic_t count;
} folders[MAX_FOLDERS];
static volatile sig_atomic_t folder_used[MAX_FOLDERS];

/* Sets a slot's path: the handler skips the slot while it changes. */
static int temporary_set(int slot, const char *path)
{
    pthread_mutex_lock(&temporaries_lock);
    for (int i = 0; i < MAX_TEMPORARIES && slot < 0; i++)
        if (!temporary_used[i]) slot = i;
    if (slot >= 0 && strlen(path) < sizeof temporaries[slot]) {
        temporary_used[slot] = 0;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        strcpy(temporaries[slot], path);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        temporary_used[slot] = 1;
    } else {
        slot = -1;
    }
    pthread_mutex_unlock(&temporaries_lock);
    return slot;
}

static void temporary_unregister(int slot)
{
    if (slot < 0) return;
    pthread_mutex_lock(&temporaries_lock);
    temporary_used[slot] = 0;
    pthread_mutex_unlock(&temporaries_lock);
}

/* root + "/" + rel into buf, without a library call (a signal handler runs this). */
static const char *entry_path(char *buf, size_t size, const char *root, const char *rel)
{
    size_t n = 0;
    for (const char *p = root; *p && n + 1 < size; p++) buf[n++] = *p;
    if (n + 1 < size) buf[n++] = '/';
    for (const char *p = rel; *p && n + 1 < size; p++) buf[n++] = *p;
    buf[n] = '\0';
    return buf;
}

void widen_remove_temporaries(void)
{
    static char buf[8192];
    for (int i = 0; i < MAX_TEMPORARIES; i++)
        if (temporary_used[i]) unlink(temporaries[i]);
    for (int i = 0; i < MAX_FOLDERS; i++) {
        if (!folder_used[i]) continue;
        const char *root = folders[i].root;
        for (sig_atomic_t k = folders[i].count; k-- > 0;) {
            const char *path = entry_path(buf, sizeof buf, root, folders[i].entries[k]);
            if (unlink(path) != 0) rmdir(path);
        }
        rmdir(root);
    }
}

/* Makes a rename into target's folder durable. */
static void fsync_parent(const char *target)
{
    char *copy = strdup(target);
    int dfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(copy);
}

static void fsync_folder(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static void folder_unregister(widen_temp_folder *tf)
{
    if (tf->slot < 0) return;
    pthread_mutex_lock(&temporaries_lock);
    folder_used[tf->slot] = 0;
    pthread_mutex_unlock(&temporaries_lock);
    for (sig_atomic_t k = 0; k < folders[tf->slot].count; k++) free(folders[tf->slot].entries[k]);
    free(folders[tf->slot].entries);
    tf->slot = -1;
}

widen_status widen_temp_folder_open(const char *target, size_t capacity, widen_temp_folder *tf, widen_error *err)
{
    memset(tf, 0, sizeof *tf);
    tf->slot = -1;
    char *copy = strdup(target), *copy2 = strdup(target);
    char **entries = calloc(capacity + 1, sizeof *entries);
    widen_status st = WIDEN_OK;
    if (!copy || !copy2 || !entries) st = widen_fail(err, WIDEN_EIO, "out of memory");
    const char *dir = st ? "" : dirname(copy), *base = st ? "" : basename(copy2);
    size_t size = strlen(dir) + strlen(base) + 32;
    if (!st && !(tf->path = calloc(1, size))) st = widen_fail(err, WIDEN_EIO, "out of memory");
    pthread_mutex_lock(&temporaries_lock);
    for (int i = 0; i < MAX_FOLDERS && !st && tf->slot < 0; i++) {
        if (folder_used[i]) continue;
        folders[i].root = tf->path;
        folders[i].entries = entries;
        folders[i].capacity = capacity + 1;
        folders[i].count = 0;
        folder_used[i] = 1;
        tf->slot = i;
    }
    pthread_mutex_unlock(&temporaries_lock);
    if (tf->slot < 0) free(entries);
    for (int attempt = 0; !st; attempt++) {
        unsigned char r[6];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) memset(r, attempt, sizeof r);
        static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        char suffix[8];
        for (int i = 0; i < 6; i++) suffix[i] = digits[r[i] % 36];
        suffix[6] = '\0';
        snprintf(tf->path, size, "%s/.%.200s.widen-%s", dir, base, suffix);
        if (mkdir(tf->path, 0777) == 0) break;
        if (errno != EEXIST || attempt > 100)
            st = widen_fail(err, WIDEN_EIO, "%s: cannot create a folder in %s: %s", target, dir, strerror(errno));
    }
    free(copy);
    free(copy2);
    if (st) {
        folder_unregister(tf);
        free(tf->path);
        tf->path = NULL;
    }
    return st;
}

widen_status widen_temp_folder_note(widen_temp_folder *tf, const char *path, widen_error *err)
{
    if (!tf->path) return widen_fail(err, WIDEN_EIO, "no temporary folder");
    if (tf->slot < 0) return WIDEN_OK; /* more applies at once than the table holds: not removed on a signal */
    __typeof__(folders[0]) *f = &folders[tf->slot];
    size_t n = strlen(tf->path);
    char *rel = strncmp(path, tf->path, n) == 0 && path[n] == '/' ? strdup(path + n + 1) : NULL;
    if (!rel || (size_t)f->count >= f->capacity) {
        free(rel);
        return widen_fail(err, WIDEN_EIO, "%s: more entries than planned for its temporary folder", path);
    }
    f->entries[f->count] = rel;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    f->count = f->count + 1;
    return WIDEN_OK;
}

/* Removes what is left of the folder: the recorded entries, then anything else (an entry not
 * recorded because the table was full). */
static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            size_t size = strlen(path) + strlen(e->d_name) + 2;
            char *child = malloc(size);
            if (!child) continue;
            snprintf(child, size, "%s/%s", path, e->d_name);
            if (unlinkat(dirfd(d), e->d_name, 0) != 0) remove_tree(child);
            free(child);
        }
        closedir(d);
    }
    rmdir(path);
}

void widen_temp_folder_discard(widen_temp_folder *tf)
{
    if (tf->path) {
        remove_tree(tf->path);
    } else if (tf->target && tf->slot >= 0) {
        /* in place, but the apply it belongs to failed: what was recorded goes, nothing else (a
         * file someone put there meanwhile keeps the folder) */
        char buf[8192];
        for (sig_atomic_t k = folders[tf->slot].count; k-- > 0;) {
            const char *path = entry_path(buf, sizeof buf, tf->target, folders[tf->slot].entries[k]);
            if (unlink(path) != 0) rmdir(path);
        }
        rmdir(tf->target);
    }
    folder_unregister(tf);
    free(tf->path);
    free(tf->target);
    tf->path = tf->target = NULL;
}

widen_status widen_temp_folder_commit(widen_temp_folder *tf, const char *target, int do_fsync, widen_error *err)
{
    if (!(tf->target = strdup(target))) return widen_fail(err, WIDEN_EIO, "out of memory");
    if (do_fsync) {
        /* the files were fsynced as they were written; the folders that hold them, now */
        char buf[8192];
        for (sig_atomic_t k = 0; tf->slot >= 0 && k < folders[tf->slot].count; k++) {
            struct stat s;
            const char *path = entry_path(buf, sizeof buf, tf->path, folders[tf->slot].entries[k]);
            if (stat(path, &s) == 0 && S_ISDIR(s.st_mode)) fsync_folder(path);
        }
        fsync_folder(tf->path);
    }
    int rc = renameat2(AT_FDCWD, tf->path, AT_FDCWD, target, RENAME_NOREPLACE);
    if (rc != 0 && errno == EINVAL) {
        /* no RENAME_NOREPLACE on this file system: rename(2) would replace an empty folder made
         * meanwhile, which this check leaves only the smallest window for */
        struct stat s;
        rc = lstat(target, &s) == 0 ? (errno = EEXIST, -1) : rename(tf->path, target);
    }
    if (rc != 0)
        return widen_fail(err, errno == EEXIST || errno == ENOTEMPTY ? WIDEN_EUSAGE : WIDEN_EIO,
                          "%s: cannot rename into place: %s", target, strerror(errno));
    /* registered under its final name until the apply is done */
    if (tf->slot >= 0) folders[tf->slot].root = tf->target;
    free(tf->path);
    tf->path = NULL;
    if (do_fsync) fsync_parent(target);
    return WIDEN_OK;
}

void widen_temp_folder_release(widen_temp_folder *tf)
{
    folder_unregister(tf);
    free(tf->target);
    tf->target = NULL;
}

typedef widen_temp_file temp_file;

/* The temporary file beside the target: ".<target's name>.widen-<random>", its name cut to fit
 * NAME_MAX, created with mode 0666 so that the process umask applies (as for any new file) without
 * this library touching the process-wide umask. */
widen_status widen_temp_open(const char *target, temp_file *tf, widen_error *err)
{
    char *copy = strdup(target), *copy2 = strdup(target);
    memset(tf, 0, sizeof *tf);
    tf->fd = -1;
    tf->slot = -1;
    if (!copy || !copy2) {
        free(copy);
        free(copy2);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    const char *dir = dirname(copy), *base = basename(copy2);
    size_t size = strlen(dir) + strlen(base) + 32;
    widen_status st = WIDEN_OK;
    if (!(tf->path = malloc(size))) st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (int attempt = 0; !st && tf->fd < 0; attempt++) {
        unsigned char r[6];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) memset(r, attempt, sizeof r);
        char suffix[16];
        static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        for (int i = 0; i < 6; i++) suffix[i] = digits[r[i] % 36];
        suffix[6] = '\0';
        snprintf(tf->path, size, "%s/.%.200s.widen-%s", dir, base, suffix);
        tf->slot = temporary_set(tf->slot, tf->path); /* before it exists */
        tf->fd = open(tf->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (tf->fd < 0 && (errno != EEXIST || attempt > 100))
            st = widen_fail(err, WIDEN_EIO, "%s: cannot create a file in %s: %s", target, dir, strerror(errno));
    }
    if (st) {
        temporary_unregister(tf->slot);
        tf->slot = -1;
        free(tf->path);
        tf->path = NULL;
    }
    free(copy);
    free(copy2);
    return st;
}

void widen_temp_discard(temp_file *tf)
{
    if (tf->fd >= 0) close(tf->fd);
    if (tf->path) unlink(tf->path);
    if (tf->target) unlink(tf->target); /* in place, but the apply it belongs to failed */
    temporary_unregister(tf->slot);
    tf->slot = -1;
    free(tf->path);
    free(tf->target);
    tf->path = tf->target = NULL;
    tf->fd = -1;
}

void widen_temp_release(temp_file *tf)
{
    temporary_unregister(tf->slot);
    tf->slot = -1;
    free(tf->target);
    tf->target = NULL;
}

/* Closes (after fsync) and renames into place; without overwrite, never replaces a file that
 * appeared meanwhile. It stays registered, under its final name, until released. */
widen_status widen_temp_commit(temp_file *tf, const char *target, int do_fsync, int overwrite, widen_error *err)
{
    if (do_fsync && fsync(tf->fd) != 0)
        return widen_fail(err, WIDEN_EIO, "%s: fsync failed: %s", target, strerror(errno));
    if (close(tf->fd) != 0) {
        tf->fd = -1;
        return widen_fail(err, WIDEN_EIO, "%s: close failed: %s", target, strerror(errno));
    }
    tf->fd = -1;
    if (!(tf->target = strdup(target))) return widen_fail(err, WIDEN_EIO, "out of memory");
    int rc = overwrite ? rename(tf->path, target) : renameat2(AT_FDCWD, tf->path, AT_FDCWD, target, RENAME_NOREPLACE);
    if (rc != 0 && !overwrite && errno == EINVAL) { /* file system without RENAME_NOREPLACE */
        rc = link(tf->path, target);
        if (rc == 0) unlink(tf->path);
    }
    if (rc != 0) {
        free(tf->target);
        tf->target = NULL;
        return widen_fail(err, errno == EEXIST ? WIDEN_EUSAGE : WIDEN_EIO, "%s: cannot rename into place: %s",
                          target, strerror(errno));
    }
    if (tf->slot >= 0 && temporary_set(tf->slot, target) < 0) tf->slot = -1;
    free(tf->path);
    tf->path = NULL;
    if (do_fsync) fsync_parent(target);
    return WIDEN_OK;
}

static void tensor_json(widen_text *t, widen_dtype dtype, int rank, const uint64_t *shape, widen_hash128 hash)
{
    char hex[33];
    widen_hash128_hex(hash, hex);
    widen_text_puts(t, "{\"dtype\": ");
    widen_text_json_string(t, widen_dtype_name(dtype));
    widen_text_puts(t, ", \"shape\": [");
    for (int d = 0; d < rank; d++) {
        if (d) widen_text_puts(t, ", ");
        widen_text_uint(t, shape[d]);
    }
    widen_text_puts(t, "], \"xxh3_128\": \"");
    widen_text_puts(t, hex);
    widen_text_puts(t, "\"}");
}

void widen_manifest_tensor(widen_text *t, const widen_plan_tensor *p, const char *prefix, const char *file)
{
    widen_text_puts(t, "{\"name\": ");
    if (*prefix) {
        widen_text tmp = {0};
        widen_text_puts(&tmp, prefix);
        widen_text_puts(&tmp, p->name);
        if (tmp.failed) t->failed = 1;
        else widen_text_json_string(t, tmp.data);
        free(tmp.data);
    } else {
        widen_text_json_string(t, p->name);
    }
    if (file) {
        widen_text_puts(t, ", \"file\": ");
        widen_text_json_string(t, file);
    }
    widen_text_puts(t, ", \"op\": ");
    widen_text_json_string(t, p->op == WIDEN_OP_COPY ? "copy" : p->axis < 0 ? "cast" : "remap");
    widen_text_puts(t, ",\n     \"input\": ");
    tensor_json(t, p->in->dtype, p->in->rank, p->in->shape, p->in_hash);
    widen_text_puts(t, ",\n     \"output\": ");
    tensor_json(t, p->dtype, p->rank, p->shape, p->out_hash);
    widen_text_puts(t, "}");
}

/* The manifest, written as text (no JSON tree: it lists every tensor). `transform_json` is the
 * provenance apply records, kept as it is (verify compares it byte for byte). */
static char *manifest_text(const char *input, const char *output, const char *transform_json, const widen_plan *plan)
{
    widen_text t = {0};
    widen_text_puts(&t, "{\n  \"tool\": \"widen\",\n  \"version\": ");
    widen_text_json_string(&t, WIDEN_VERSION_STRING);
    widen_text_puts(&t, ",\n  \"input\": ");
    widen_text_json_string(&t, input);
    widen_text_puts(&t, ",\n  \"output\": ");
    widen_text_json_string(&t, output);
    widen_text_puts(&t, ",\n  \"transform\": ");
    widen_text_puts(&t, transform_json);
    widen_text_puts(&t, ",\n  \"tensors\": [");
    for (size_t i = 0; i < plan->count; i++) {
        widen_text_puts(&t, i ? ",\n    " : "\n    ");
        widen_manifest_tensor(&t, &plan->tensors[i], "", NULL);
    }
    widen_text_puts(&t, plan->count ? "\n  ]\n}" : "]\n}");
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    return t.data;
}

/* The path a name will have once created: its folder resolved (links, "..") and its own name. */
static char *resolved(const char *path)
{
    char *copy = strdup(path), *copy2 = strdup(path), *dir = NULL, *out = NULL;
    if (copy && copy2 && (dir = realpath(dirname(copy), NULL))) {
        const char *base = basename(copy2);
        size_t size = strlen(dir) + strlen(base) + 2;
        if ((out = malloc(size))) snprintf(out, size, "%s/%s", dir, base);
    }
    free(dir);
    free(copy);
    free(copy2);
    return out;
}

/* Refuses an output that is empty, "-", the input (by inode, so links count), or that exists without
 * overwrite, or exists and is not a regular file (a link, a FIFO, a device: overwrite replaces files). */
static widen_status check_target(const char *input, const char *output, const char *what, int overwrite,
                                 widen_error *err)
{
    struct stat in, out;
    if (!*output) return widen_fail(err, WIDEN_EUSAGE, "the %s path is empty", what);
    if (strcmp(output, "-") == 0)
        return widen_fail(err, WIDEN_EUSAGE, "-: a path, not standard output (widen_apply_to_fd writes to a descriptor)");
    if (stat(output, &out) == 0 && stat(input, &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
        return widen_fail(err, WIDEN_EUSAGE, "%s: the %s is the input file; widen never overwrites its input", output, what);
    if (lstat(output, &out) != 0) return WIDEN_OK;
    if (S_ISDIR(out.st_mode)) return widen_fail(err, WIDEN_EUSAGE, "%s: is a directory", output);
    if (!S_ISREG(out.st_mode))
        return widen_fail(err, WIDEN_EUSAGE, "%s: exists and is not a regular file (%s); widen replaces only files",
                          output, S_ISLNK(out.st_mode) ? "a symbolic link" : S_ISFIFO(out.st_mode) ? "a FIFO"
                          : S_ISCHR(out.st_mode) || S_ISBLK(out.st_mode) ? "a device" : "a special file");
    if (!overwrite) return widen_fail_hint(err, WIDEN_HINT_OVERWRITE, WIDEN_EUSAGE, "%s: exists", output);
    return WIDEN_OK;
}

/* The output format: the option, else the output's extension, else the input's. */
static const char *output_format(const char *option, const char *output, const char *input_format)
{
    if (option) return option;
    size_t n = strlen(output);
    static const char *const pt[] = {".pt", ".pth", ".bin"};
    const char *format = n >= 12 && strcmp(output + n - 12, ".safetensors") == 0 ? "safetensors" : input_format;
    for (int i = 0; i < 3; i++)
        if (n >= strlen(pt[i]) && strcmp(output + n - strlen(pt[i]), pt[i]) == 0) format = "pt";
    if (n >= 4 && strcmp(output + n - 4, ".npz") == 0) format = "npz";
    if (n >= 4 && strcmp(output + n - 4, ".npy") == 0) format = "npy";
    return format;
}

/* safetensors metadata a .pt or .npz output drops: everything but the provenance key, and for a .pt
 * {"format": "pt"} (which a .pt file says by being one). */
static void metadata_notice(const widen_checkpoint *ckpt, const widen_apply_options *options, int to_pt)
{
    size_t dropped = 0;
    for (size_t i = 0; i < ckpt->metadata_count; i++) {
        const widen_metadata_entry *m = &ckpt->metadata[i];
        dropped += !(strcmp(m->key, WIDEN_PROVENANCE_KEY) == 0 ||
                     (to_pt && strcmp(m->key, "format") == 0 && strcmp(m->value, "pt") == 0));
    }
    if (!dropped || !options->warning) return;
    char line[600];
    snprintf(line, sizeof line, "%s: %s has no place for safetensors metadata: dropping %zu key%s", ckpt->path,
             to_pt ? "a .pt state dict" : "an .npz archive", dropped, dropped == 1 ? "" : "s");
    widen_escape(line, sizeof line);
    options->warning(options->warning_user, line);
}

widen_status widen_apply(const char *input, const char *output, const widen_transform *transform,
                         const widen_apply_options *options, widen_error *err)
{
    if (!input || !output || !transform)
        return widen_fail(err, WIDEN_EUSAGE, "widen_apply needs an input path, an output path and a transform");
    widen_checkpoint *ckpt = NULL;
    widen_apply_options given;
    widen_status st = widen_apply_options_read(options, &given, err);
    if (st || (st = widen_isa_init(err))) return st;
    if ((st = check_target(input, output, "output", given.overwrite, err))) return st;
    widen_open_options open;
    widen_open_options_init(&open, sizeof open);
    open.progress = given.progress; /* an .npz's inflating: a run of its own, then the apply's */
    open.progress_user = given.progress_user;
    if ((st = widen_open_with(input, &open, &ckpt, err))) return st;
    st = widen_apply_checkpoint(ckpt, output, transform, options, err);
    widen_close(ckpt);
    return st;
}

widen_status widen_apply_checkpoint(widen_checkpoint *ckpt, const char *output, const widen_transform *transform,
                                    const widen_apply_options *options, widen_error *err)
{
    if (!ckpt || !output || !transform) /* options may be NULL: the defaults */
        return widen_fail(err, WIDEN_EUSAGE, "widen_apply_checkpoint needs a checkpoint, an output path and a transform");
    return widen_apply_file(ckpt, output, transform, options, NULL, err);
}

static uint64_t tensor_elements(int rank, const uint64_t *shape)
{
    uint64_t n = 1;
    for (int d = 0; d < rank; d++) n *= shape[d];
    return n;
}

void widen_apply_record_sizes(widen_apply_record *record, const widen_plan *plan)
{
    for (size_t i = 0; i < plan->count; i++) {
        const widen_plan_tensor *p = &plan->tensors[i];
        uint64_t in_n = tensor_elements(p->in->rank, p->in->shape), out_n = tensor_elements(p->rank, p->shape);
        record->in_elements += in_n;
        record->out_elements += out_n;
        record->in_bytes += in_n * widen_dtype_bits(p->in->dtype) / 8;
        record->out_bytes += out_n * widen_dtype_bits(p->dtype) / 8;
    }
}

/* Where one apply's bytes go: a temporary file beside `name`, renamed into place once complete (fd
 * < 0), or a descriptor the caller opened, written front to back as the bytes come (a stream). */
typedef struct apply_target {
    const char *name; /* the output's path; for a stream, what messages and the manifest call it */
    int fd;           /* a stream's descriptor, else -1 */
    int regular;      /* a stream that is a regular file: copy_file_range and fsync apply to it */
    int in_new_folder; /* a model folder's file: its folder is made by the folder's apply */
} apply_target;

/* For a dry run: the folder a temporary file beside `target` would go into exists and takes files
 * (what widen_temp_open would find out by creating one). */
widen_status widen_writable_folder(const char *target, const char *what, widen_error *err)
{
    char *copy = strdup(target);
    if (!copy) return widen_fail(err, WIDEN_EIO, "out of memory");
    const char *dir = dirname(copy);
    struct stat st;
    int error = stat(dir, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : access(dir, W_OK | X_OK) != 0 ? errno : 0;
    widen_status status = error ? widen_fail(err, WIDEN_EIO, "%s: cannot create %s in %s: %s", target, what, dir,
                                             strerror(error)) : WIDEN_OK;
    free(copy);
    return status;
}

/* Refuses a stream that cannot take a checkpoint: a descriptor not open for writing, a folder, a
 * terminal, the input file itself, or the manifest's file. */
static widen_status check_stream(const char *input, apply_target *t, const char *manifest_path, int dry_run,
                                 widen_error *err)
{
    struct stat in, out, man;
    int flags = fcntl(t->fd, F_GETFL);
    if (flags < 0 || fstat(t->fd, &out) != 0)
        return widen_fail(err, WIDEN_EUSAGE, "%s: descriptor %d is not open", t->name, t->fd);
    if ((flags & O_ACCMODE) == O_RDONLY)
        return widen_fail(err, WIDEN_EUSAGE, "%s: descriptor %d is not open for writing", t->name, t->fd);
    if (S_ISDIR(out.st_mode)) return widen_fail(err, WIDEN_EUSAGE, "%s: is a directory", t->name);
    if (isatty(t->fd) && !dry_run) return widen_fail(err, WIDEN_EUSAGE, "%s: refusing to write a checkpoint to a terminal", t->name);
    if (stat(input, &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
        return widen_fail(err, WIDEN_EUSAGE, "%s: the output is the input file; widen never overwrites its input", t->name);
    if (manifest_path && stat(manifest_path, &man) == 0 && man.st_dev == out.st_dev && man.st_ino == out.st_ino)
        return widen_fail(err, WIDEN_EUSAGE, "%s: the manifest and the output are the same file", t->name);
    t->regular = S_ISREG(out.st_mode);
    return WIDEN_OK;
}

/* Checks the output and the manifest targets; returns the output format (NULL after a failure). */
static const char *check_targets(const widen_checkpoint *ckpt, apply_target *t, const widen_apply_options *options,
                                 widen_status *st, widen_error *err)
{
    const char *input = ckpt->path, *output = t->name;
    if (t->fd >= 0 ? (*st = check_stream(input, t, options->manifest_path, options->dry_run, err))
                   : (*st = check_target(input, output, "output", options->overwrite, err)))
        return NULL;
    if (options->manifest_path) {
        if ((*st = check_target(input, options->manifest_path, "manifest", options->overwrite, err))) return NULL;
        char *a = t->fd < 0 ? resolved(output) : NULL, *b = t->fd < 0 ? resolved(options->manifest_path) : NULL;
        int same = a && b && strcmp(a, b) == 0;
        free(a);
        free(b);
        if (same) {
            *st = widen_fail(err, WIDEN_EUSAGE, "%s: the manifest and the output are the same file", output);
            return NULL;
        }
    }
    /* a stream has no name to take a format from: the option, else the input's */
    const char *format = t->fd >= 0 ? (options->format ? options->format : ckpt->format)
                                    : output_format(options->format, output, ckpt->format);
    if (strcmp(format, "npy") == 0 && t->fd >= 0) /* nor an .npz, below */
        *st = widen_fail_hint(err, WIDEN_HINT_FORMAT, WIDEN_EUSAGE, "%s: widen does not write .npy files: choose "
                              "safetensors or pt for a stream", output);
    else if (strcmp(format, "npy") == 0)
        *st = widen_fail_hint(err, WIDEN_HINT_FORMAT, WIDEN_EUSAGE, "%s: widen does not write .npy files: name an "
                              ".npz, .safetensors or .pt output, or choose one of those formats", output);
    else if (strcmp(format, "safetensors") != 0 && strcmp(format, "pt") != 0 && strcmp(format, "npz") != 0)
        *st = widen_fail(err, WIDEN_EUSAGE, "output format '%s' is not safetensors, pt or npz", format);
    else if (t->fd >= 0 && strcmp(format, "npz") == 0) /* np.savez's local headers hold each member's CRC */
        *st = widen_fail_hint(err, WIDEN_HINT_FORMAT, WIDEN_EUSAGE, "%s: an .npz cannot be streamed (each member's CRC goes back into its "
                         "header once written): write it to a file, or choose safetensors or pt", output);
    return *st ? NULL : format;
}

/* Appends to a stream's failure message that what the reader got so far is not a checkpoint. */
static widen_status stream_failed(widen_status st, widen_error *err)
{
    if (err && st) {
        size_t n = strlen(err->message);
        snprintf(err->message + n, sizeof err->message - n, "; the output stream is incomplete");
    }
    return st;
}

/* One apply, to a file (a temporary renamed into place) or to a stream: every check, then the
 * manifest's temporary, then the bytes front to back, then the manifest, then the rename. */
static widen_status apply_to(widen_checkpoint *ckpt, apply_target target, const widen_transform *transform,
                             const widen_apply_options *options, widen_apply_record *record, widen_error *err)
{
    widen_apply_options given;
    widen_status st = widen_apply_options_read(options, &given, err);
    if (st) return st;
    options = &given;
    if (!target.in_new_folder) widen_apply_stats_reset(given.stats); /* a folder's apply counts its files */
    const char *input = ckpt->path, *output = target.name;
    int stream = target.fd >= 0;
    if ((st = widen_isa_init(err))) return st;
    const char *format = check_targets(ckpt, &target, options, &st, err);
    if (st) return st;
    int to_pt = strcmp(format, "pt") == 0, to_npz = strcmp(format, "npz") == 0;
    widen_plan plan;
    char *provenance = NULL, *manifest = NULL;
    temp_file out = {.fd = -1, .slot = -1}, man = {.fd = -1, .slot = -1};
    if ((st = widen_plan_build(ckpt, transform, &plan, err))) return st;
    if (transform->count == 0 && !transform->cast && strcmp(format, ckpt->format) == 0) {
        st = widen_fail(err, WIDEN_EUSAGE, "nothing to do: no tensor is remapped, nothing is cast, and the format "
                        "stays the same");
        goto done;
    }
    /* a file the output format cannot hold is refused before any notice about it */
    if (to_pt && (st = widen_torch_synthesize(ckpt, err))) goto done;
    if (to_npz && (st = widen_npz_check(ckpt, &plan, err))) goto done;
    if (!(provenance = widen_transform_to_json(transform))) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
        goto done;
    }
    /* what a .pt, .npz or safetensors output leaves out: said before anything is written */
    if (to_pt) metadata_notice(ckpt, options, 1), widen_torch_notes(ckpt, transform, options->warning, options->warning_user);
    else if (to_npz) metadata_notice(ckpt, options, 0);
    else widen_torch_conversion_notes(ckpt, "safetensors", options->warning, options->warning_user);
    if (to_npz) widen_torch_conversion_notes(ckpt, "an .npz archive", options->warning, options->warning_user);
    if (to_npz && !widen_npz_comment_for(provenance) && !options->manifest_path && options->warning) {
        char line[600];
        snprintf(line, sizeof line, "%s: the transform is too long for the archive comment that records it, and no "
                 "manifest is written: verify will need one", output);
        widen_escape(line, sizeof line);
        options->warning(options->warning_user, line);
    }
    if (options->dry_run) {
        if (!stream && !target.in_new_folder) st = widen_writable_folder(output, "a file", err);
        if (!st && options->manifest_path) st = widen_writable_folder(options->manifest_path, "a file", err);
        goto done;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    widen_exec_options eo = {.threads = options->threads ? options->threads : (unsigned)(cpus > 0 ? cpus : 1),
                             .isa = WIDEN_ISA_COUNT, .progress = options->progress,
                             .progress_user = options->progress_user,
                             /* the bytes of untouched runs are read only where a manifest wants their
                              * hashes (or an .npz its CRCs): cloned runs stay unread */
                             .unhashed_copies = !options->manifest_path && !(record && record->tensors)};
    /* the manifest's temporary before the first byte: a manifest folder that cannot take it is known
     * while the output is still untouched */
    if (options->manifest_path && (st = widen_temp_open(options->manifest_path, &man, err))) goto done;
    if (!stream && (st = widen_temp_open(output, &out, err))) goto done;
    widen_file_output file;
    widen_file_output_init(&file, stream ? target.fd : out.fd, output);
    if (stream && !target.regular) file.base.copy = NULL; /* copy_file_range takes files only */
    if (!stream) widen_file_output_at_offsets(&file); /* the temporary, empty: written at offsets */
    if (to_pt) {
        st = widen_torch_write(ckpt, transform, &plan, &file.base, &eo, NULL, err);
        if (!st && (options->manifest_path || (record && record->tensors)))
            st = widen_torch_hash_views(ckpt, &plan, &eo, err);
    } else if (to_npz) {
        st = widen_npz_write(ckpt, &plan, provenance, &file.base, &eo, NULL, err);
    } else {
        st = widen_safetensors_write(ckpt, &plan, provenance, &file.base, &eo, err);
    }
    if (!st) st = widen_file_output_flush(&file, err);
    widen_copy_counts counts = file.counts;
    widen_file_output_free(&file);
    if (st == WIDEN_EINTERRUPTED) widen_fail(err, st, "%s: interrupted; %s", output, stream ? "the output stream is "
                                             "incomplete" : "no output written");
    else if (st && stream) stream_failed(st, err);
    if (st) goto done;
    if (stream && target.regular && options->fsync && fsync(target.fd) != 0) {
        st = widen_fail(err, WIDEN_EIO, "%s: fsync failed: %s", output, strerror(errno));
        goto done;
    }
    if (record) widen_apply_record_sizes(record, &plan);
    for (size_t i = 0; record && i < plan.count; i++) {
        const widen_plan_tensor *p = &plan.tensors[i];
        if (record->tensors) {
            widen_text_puts(record->tensors, (*record->entries)++ ? ",\n    " : "\n    ");
            widen_manifest_tensor(record->tensors, p, record->prefix, record->file);
        }
    }
    if (options->manifest_path) {
        manifest = manifest_text(input, output, provenance, &plan);
        if (!manifest) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            goto done;
        }
        if ((st = widen_write_all(man.fd, manifest, strlen(manifest), options->manifest_path, err))) goto done;
        if ((st = widen_write_all(man.fd, "\n", 1, options->manifest_path, err))) goto done;
        if ((st = widen_temp_commit(&man, options->manifest_path, options->fsync, options->overwrite, err))) goto done;
    }
    if (!stream) st = widen_temp_commit(&out, output, options->fsync, options->overwrite, err);
    if (!st) widen_apply_stats_add(options->stats, &counts);
done:
    if (st) {
        widen_temp_discard(&out);
        widen_temp_discard(&man);
    } else {
        widen_temp_release(&out);
        widen_temp_release(&man);
    }
    free(provenance);
    free(manifest);
    widen_plan_free(&plan);
    return st;
}

widen_status widen_apply_file(widen_checkpoint *ckpt, const char *output, const widen_transform *transform,
                              const widen_apply_options *options, widen_apply_record *record, widen_error *err)
{
    if (!ckpt || !output || !transform)
        return widen_fail(err, WIDEN_EUSAGE, "widen_apply_checkpoint needs a checkpoint, an output path and a transform");
    /* a record is kept for a model folder's files, which go into the folder its apply makes */
    return apply_to(ckpt, (apply_target){.name = output, .fd = -1, .in_new_folder = record != NULL}, transform, options,
                    record, err);
}

widen_status widen_apply_to_fd(widen_checkpoint *input, int fd, const char *name, const widen_transform *transform,
                               const widen_apply_options *options, widen_error *err)
{
    if (!input || fd < 0 || !transform)
        return widen_fail(err, WIDEN_EUSAGE, "widen_apply_to_fd needs a checkpoint, an open descriptor and a transform");
    return apply_to(input, (apply_target){.name = name ? name : "<output stream>", .fd = fd}, transform, options, NULL,
                    err);
}
