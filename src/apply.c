/* apply.c: file to file: plan, stream into a temporary file beside the output, fsync, rename. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

void widen_apply_options_init(widen_apply_options *o)
{
    memset(o, 0, sizeof *o);
    o->fsync = 1;
}

/* The temporary files of applies in progress, for widen_remove_temporaries. The only process-wide
 * state of the library besides the kernel table: a signal handler has nothing else to go by. */
enum { MAX_TEMPORARIES = 16 };
static char temporaries[MAX_TEMPORARIES][4096];
static volatile sig_atomic_t temporary_used[MAX_TEMPORARIES];
static pthread_mutex_t temporaries_lock = PTHREAD_MUTEX_INITIALIZER;

static int temporary_register(const char *path)
{
    int slot = -1;
    pthread_mutex_lock(&temporaries_lock);
    for (int i = 0; i < MAX_TEMPORARIES && slot < 0; i++) {
        if (!temporary_used[i] && strlen(path) < sizeof temporaries[i]) {
            strcpy(temporaries[i], path);
            temporary_used[i] = 1;
            slot = i;
        }
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

void widen_remove_temporaries(void)
{
    for (int i = 0; i < MAX_TEMPORARIES; i++)
        if (temporary_used[i]) unlink(temporaries[i]);
}

typedef struct temp_file {
    char *path; /* NULL once renamed into place or removed */
    int fd;
    int slot;   /* in the table of temporaries */
} temp_file;

static widen_status temp_open(const char *target, temp_file *tf, widen_error *err)
{
    char *copy = strdup(target), *copy2 = strdup(target);
    tf->fd = -1;
    tf->path = NULL;
    tf->slot = -1;
    if (!copy || !copy2) {
        free(copy);
        free(copy2);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    const char *dir = dirname(copy), *base = basename(copy2);
    size_t size = strlen(dir) + strlen(base) + 32;
    tf->path = malloc(size);
    widen_status st = WIDEN_OK;
    if (!tf->path) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
    } else {
        snprintf(tf->path, size, "%s/.%s.widen-XXXXXX", dir, base);
        tf->fd = mkostemp(tf->path, O_CLOEXEC);
        if (tf->fd >= 0) tf->slot = temporary_register(tf->path);
        if (tf->fd < 0) {
            st = widen_fail(err, WIDEN_EIO, "%s: cannot create a file in %s: %s", target, dir, strerror(errno));
            free(tf->path);
            tf->path = NULL;
        } else {
            mode_t mask = umask(0);
            umask(mask);
            fchmod(tf->fd, 0666 & ~mask);
        }
    }
    free(copy);
    free(copy2);
    return st;
}

static void temp_discard(temp_file *tf)
{
    if (tf->fd >= 0) close(tf->fd);
    if (tf->path) unlink(tf->path);
    temporary_unregister(tf->slot);
    tf->slot = -1;
    free(tf->path);
    tf->path = NULL;
    tf->fd = -1;
}

widen_status widen_write_all(int fd, const void *data, size_t len, const char *target, widen_error *err)
{
    const unsigned char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return widen_fail(err, WIDEN_EIO, "%s: write failed: %s", target, strerror(n < 0 ? errno : EIO));
        p += n;
        len -= (size_t)n;
    }
    return WIDEN_OK;
}

widen_status widen_copy_all(int in_fd, uint64_t in_offset, int fd, uint64_t len, const char *target, widen_error *err)
{
    loff_t from = (loff_t)in_offset;
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = copy_file_range(in_fd, &from, fd, NULL, (size_t)(len - done), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (done == 0 && (n == 0 || errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
                              errno == EBADF))
                return WIDEN_EUSAGE;
            return widen_fail(err, WIDEN_EIO, "%s: write failed: %s", target, n < 0 ? strerror(errno) : "short copy");
        }
        done += (uint64_t)n;
    }
    return WIDEN_OK;
}

/* Closes (after fsync) and renames into place; without overwrite, never replaces a file that
 * appeared meanwhile. */
static widen_status temp_commit(temp_file *tf, const char *target, int do_fsync, int overwrite, widen_error *err)
{
    if (do_fsync && fsync(tf->fd) != 0)
        return widen_fail(err, WIDEN_EIO, "%s: fsync failed: %s", target, strerror(errno));
    if (close(tf->fd) != 0) {
        tf->fd = -1;
        return widen_fail(err, WIDEN_EIO, "%s: close failed: %s", target, strerror(errno));
    }
    tf->fd = -1;
    int rc = overwrite ? rename(tf->path, target) : renameat2(AT_FDCWD, tf->path, AT_FDCWD, target, RENAME_NOREPLACE);
    if (rc != 0 && !overwrite && errno == EINVAL) { /* file system without RENAME_NOREPLACE */
        rc = link(tf->path, target);
        if (rc == 0) unlink(tf->path);
    }
    if (rc != 0)
        return widen_fail(err, errno == EEXIST ? WIDEN_EUSAGE : WIDEN_EIO, "%s: cannot rename into place: %s",
                          target, strerror(errno));
    free(tf->path);
    tf->path = NULL;
    temporary_unregister(tf->slot);
    tf->slot = -1;
    if (do_fsync) {
        char *copy = strdup(target);
        int dfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(copy);
    }
    return WIDEN_OK;
}

typedef struct write_sink {
    int fd;
    const char *target;
    int in_fd;
} write_sink;

/* Untouched bytes go from the input's page cache to the output's inside the kernel, as cp does. */
static widen_status sink_copy(void *user, size_t index, uint64_t offset, uint64_t in_offset, size_t len, widen_error *err)
{
    (void)index;
    (void)offset;
    write_sink *w = user;
    return w->in_fd < 0 ? WIDEN_EUSAGE : widen_copy_all(w->in_fd, in_offset, w->fd, len, w->target, err);
}

static widen_status sink_write(void *user, size_t index, uint64_t offset, const void *data, size_t len,
                               widen_error *err)
{
    (void)index;
    (void)offset;
    write_sink *w = user;
    return widen_write_all(w->fd, data, len, w->target, err);
}

static widen_status sink_none(void *user, size_t index, uint64_t offset, const void *data, size_t len, widen_error *err)
{
    (void)user, (void)index, (void)offset, (void)data, (void)len, (void)err;
    return WIDEN_OK;
}

/* The manifest's hashes of the tensors a .pt output did not hash whole (views into part of a
 * storage, strided tensors): one more read of those tensors alone. */
static widen_status hash_views(const widen_checkpoint *ckpt, widen_plan *plan, const widen_exec_options *eo,
                               widen_error *err)
{
    widen_plan rest = *plan;
    rest.tensors = malloc((plan->count + 1) * sizeof *rest.tensors);
    if (!rest.tensors) return widen_fail(err, WIDEN_EIO, "out of memory");
    rest.count = 0;
    rest.data_bytes = 0;
    for (size_t i = 0; i < plan->count; i++)
        if (!plan->tensors[i].hashed) {
            rest.tensors[rest.count++] = plan->tensors[i];
            rest.data_bytes += plan->tensors[i].nbytes;
        }
    widen_status st = rest.count ? widen_execute(ckpt, &rest, eo, sink_none, NULL, err) : WIDEN_OK;
    for (size_t i = 0, k = 0; i < plan->count && !st; i++)
        if (!plan->tensors[i].hashed) plan->tensors[i] = rest.tensors[k++];
    free(rest.tensors);
    return st;
}

static json_t *tensor_json(widen_dtype dtype, int rank, const uint64_t *shape, widen_hash128 hash)
{
    char hex[33];
    json_t *obj = json_object(), *dims = json_array();
    for (int d = 0; d < rank; d++) json_array_append_new(dims, json_integer((json_int_t)shape[d]));
    widen_hash128_hex(hash, hex);
    json_object_set_new(obj, "dtype", json_string(widen_dtype_name(dtype)));
    json_object_set_new(obj, "shape", dims);
    json_object_set_new(obj, "xxh3_128", json_string(hex));
    return obj;
}

static char *manifest_text(const char *input, const char *output, const char *transform_json, const widen_plan *plan)
{
    json_t *root = json_object(), *tensors = json_array();
    json_object_set_new(root, "tool", json_string("widen"));
    json_object_set_new(root, "version", json_string(WIDEN_VERSION_STRING));
    json_object_set_new(root, "input", json_string(input));
    json_object_set_new(root, "output", json_string(output));
    json_object_set_new(root, "transform", json_loads(transform_json, 0, NULL));
    for (size_t i = 0; i < plan->count; i++) {
        const widen_plan_tensor *p = &plan->tensors[i];
        json_t *obj = json_object();
        json_object_set_new(obj, "name", json_string(p->name));
        json_object_set_new(obj, "op", json_string(p->op == WIDEN_OP_COPY ? "copy" : p->axis < 0 ? "cast" : "remap"));
        json_object_set_new(obj, "input", tensor_json(p->in->dtype, p->in->rank, p->in->shape, p->in_hash));
        json_object_set_new(obj, "output", tensor_json(p->dtype, p->rank, p->shape, p->out_hash));
        json_array_append_new(tensors, obj);
    }
    json_object_set_new(root, "tensors", tensors);
    char *text = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return text;
}

/* Refuses an output that is the input (by inode, so links count) or that exists without overwrite. */
static widen_status check_target(const char *input, const char *output, int overwrite, widen_error *err)
{
    struct stat in, out;
    if (stat(output, &out) != 0) return WIDEN_OK;
    if (stat(input, &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
        return widen_fail(err, WIDEN_EUSAGE, "%s: the output is the input file; widen never overwrites its input", output);
    if (S_ISDIR(out.st_mode)) return widen_fail(err, WIDEN_EUSAGE, "%s: is a directory", output);
    if (!overwrite) return widen_fail(err, WIDEN_EUSAGE, "%s: exists (use --force to replace it)", output);
    return WIDEN_OK;
}

widen_status widen_apply(const char *input, const char *output, const widen_transform *transform,
                         const widen_apply_options *options, widen_error *err)
{
    widen_apply_options defaults;
    if (!options) {
        widen_apply_options_init(&defaults);
        options = &defaults;
    }
    widen_status st = widen_isa_init(err);
    if (st) return st;
    if (options->manifest_path && (st = check_target(input, options->manifest_path, options->overwrite, err)))
        return st;
    if ((st = check_target(input, output, options->overwrite, err))) return st;
    widen_checkpoint *ckpt = NULL;
    if ((st = widen_open(input, &ckpt, err))) return st;
    const char *format = options->format;
    if (!format) {
        size_t n = strlen(output);
        static const char *const pt[] = {".pt", ".pth", ".bin"};
        format = n >= 12 && strcmp(output + n - 12, ".safetensors") == 0 ? "safetensors" : ckpt->format;
        for (int i = 0; i < 3; i++)
            if (n >= strlen(pt[i]) && strcmp(output + n - strlen(pt[i]), pt[i]) == 0) format = "pt";
    }
    if (strcmp(format, "safetensors") != 0 && strcmp(format, "pt") != 0) {
        widen_close(ckpt);
        return widen_fail(err, WIDEN_EUSAGE, "--format: '%s' is not safetensors or pt", format);
    }
    int to_pt = strcmp(format, "pt") == 0;
    widen_plan plan;
    char *provenance = NULL, *manifest = NULL;
    unsigned char *header = NULL;
    size_t header_len = 0;
    temp_file out = {.fd = -1, .slot = -1}, man = {.fd = -1, .slot = -1};
    if ((st = widen_plan_build(ckpt, transform, &plan, err))) goto done_ckpt;
    if (transform->count == 0 && !transform->cast && strcmp(format, ckpt->format) == 0) {
        st = widen_fail(err, WIDEN_EUSAGE, "nothing to do: give --to, --map or --cast, or another --format");
        goto done;
    }
    provenance = widen_transform_to_json(transform);
    if (!provenance) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
        goto done;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    widen_exec_options eo = {.threads = options->threads ? options->threads : (unsigned)(cpus > 0 ? cpus : 1),
                             .isa = WIDEN_ISA_COUNT, .progress = options->progress,
                             .progress_user = options->progress_user};
    if ((st = temp_open(output, &out, err))) goto done;
    if (to_pt) {
        if (ckpt->metadata_count && options->warning) {
            char line[600];
            snprintf(line, sizeof line, "%s: a .pt state dict has no place for safetensors metadata: dropping %zu "
                     "key%s", input, ckpt->metadata_count, ckpt->metadata_count == 1 ? "" : "s");
            options->warning(options->warning_user, line);
        }
        st = widen_torch_write(ckpt, transform, &plan, out.fd, output, &eo, err);
        if (!st && options->manifest_path) st = hash_views(ckpt, &plan, &eo, err);
    } else {
        widen_torch_conversion_notes(ckpt, options->warning, options->warning_user);
        write_sink ws = {.fd = out.fd, .target = output, .in_fd = widen_checkpoint_fd(ckpt)};
        eo.copy = sink_copy;
        if (!(st = widen_safetensors_header(&plan, ckpt, provenance, &header, &header_len, err)) &&
            !(st = widen_write_all(out.fd, header, header_len, output, err)))
            st = widen_execute(ckpt, &plan, &eo, sink_write, &ws, err);
    }
    if (st) {
        if (st == WIDEN_EINTERRUPTED) widen_fail(err, st, "%s: interrupted; no output written", output);
        goto done;
    }
    if (options->manifest_path) {
        manifest = manifest_text(input, output, provenance, &plan);
        if (!manifest) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            goto done;
        }
        if ((st = temp_open(options->manifest_path, &man, err))) goto done;
        if ((st = widen_write_all(man.fd, manifest, strlen(manifest), options->manifest_path, err))) goto done;
        if ((st = widen_write_all(man.fd, "\n", 1, options->manifest_path, err))) goto done;
        if ((st = temp_commit(&man, options->manifest_path, options->fsync, options->overwrite, err))) goto done;
    }
    if ((st = temp_commit(&out, output, options->fsync, options->overwrite, err)) && options->manifest_path)
        unlink(options->manifest_path);
done:
    temp_discard(&out);
    temp_discard(&man);
    free(header);
    free(provenance);
    free(manifest);
    widen_plan_free(&plan);
done_ckpt:
    widen_close(ckpt);
    return st;
}
