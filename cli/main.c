/* main.c: the widen command line: parses arguments, calls the library, turns statuses into
 * messages and exit codes (SPEC §2). */
#include <fnmatch.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "widen/widen.h"

/* apply -o -: the output goes to standard output as it is made, so an interruption leaves it cut
 * short rather than absent. */
static volatile sig_atomic_t streaming;

/* SIGINT and SIGTERM end every command at once, whatever it is doing (reading a header, walking a
 * pickle, writing): the temporary outputs go, then the process. Only async-signal-safe calls. */
static void on_signal(int sig)
{
    (void)sig;
    static const char msg[] = "widen: error: interrupted; no output written\n";
    static const char cut[] = "widen: error: interrupted; the output stream is incomplete\n";
    widen_remove_temporaries();
    ssize_t ignored = streaming ? write(2, cut, sizeof cut - 1) : write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(WIDEN_EINTERRUPTED);
}

/* A file shrank under its mapping (another process truncated it): remove the partial output, say
 * so, exit 4. Only async-signal-safe calls. */
static void on_bus_error(int sig)
{
    (void)sig;
    static const char msg[] = "widen: error: an input file changed size while widen was reading it (SIGBUS); "
                              "no output written\n";
    widen_remove_temporaries();
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(WIDEN_EIO);
}

static int fail(widen_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line on stderr, whatever the names in it hold (the library's messages come escaped already;
 * escaping is idempotent on them). */
static int fail(widen_status status, const char *fmt, ...)
{
    char line[2048], shown_line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    widen_escape_text(line, shown_line, sizeof shown_line);
    fprintf(stderr, "widen: error: %s\n", shown_line);
    return (int)status;
}

/* A name or path as it may be shown: control characters, non-UTF-8 bytes and terminal-affecting code
 * points escaped (names come from files). Returns a buffer that stays valid until the next call with
 * the same slot. */
static const char *shown(const char *text, int slot)
{
    static char *buffers[4];
    static size_t sizes[4];
    size_t need = widen_escape_text(text, NULL, 0) + 1;
    if (need > sizes[slot]) {
        char *grown = realloc(buffers[slot], need);
        if (!grown) return "?";
        buffers[slot] = grown;
        sizes[slot] = need;
    }
    widen_escape_text(text, buffers[slot], sizes[slot]);
    return buffers[slot];
}

/* The library's messages name what an option is (the map, overwrite, a manifest), never a flag: C and
 * Python programs embed it, and they have no --force. The command adds its flags to the lines it
 * prints, without reading English out of them: where it knows which call failed (parsing --map or
 * --init, widening to --to at --at), fail_flag puts the flag in front; where the cause lies deep in
 * apply or verify (an output that exists, configs that cannot follow), the library's err->hint says
 * which setting would change the outcome, and fail_err names its flag after the message. */
static int fail_err(const widen_error *err)
{
    static const char *const flags[] = {
        [WIDEN_HINT_OVERWRITE] = "use --force to replace it",
        [WIDEN_HINT_FORMAT] = "--format sets it",
        [WIDEN_HINT_CAST] = "--cast f32",
        [WIDEN_HINT_NO_CONFIG] = "--no-config leaves the configs as they are",
        [WIDEN_HINT_MANIFEST] = "pass --manifest FILE",
    };
    size_t hint = (size_t)err->hint;
    if (hint > 0 && hint < sizeof flags / sizeof flags[0] && flags[hint])
        return fail(err->status, "%s (%s)", err->message, flags[hint]);
    return fail(err->status, "%s", err->message);
}

/* The library's message about a value the command took from `flag`, which the line names first. */
static int fail_flag(const char *flag, const widen_error *err)
{
    return fail(err->status, "%s: %s", flag, err->message);
}

static const char usage_main[] =
    "usage: widen COMMAND [options]\n"
    "\n"
    "Model surgery on checkpoint files: change a layer's input channels in place of a full\n"
    "load-and-save, streamed in bounded memory and verified bit for bit.\n"
    "\n"
    "commands:\n"
    "  inspect FILE [--json] [--hash]        list every tensor: name, dtype, shape, bytes\n"
    "  apply INPUT -o OUTPUT [options]       widen, remap or cast tensors into a new file\n"
    "  verify INPUT OUTPUT [--manifest FILE] [--json]\n"
    "                                        prove OUTPUT is INPUT with the recorded transform\n"
    "  hash FILE [--json]                    XXH3-128 of the file and of each tensor\n"
    "\n"
    "  widen --version | --help | COMMAND --help\n"
    "\n"
    "FILE, INPUT and OUTPUT may be model folders (shards with an *.index.json, diffusers\n"
    "components, timm folders) or an *.index.json.\n"
    "\n"
    "exit status: 0 ok, 1 verification found a difference, 2 usage error,\n"
    "             3 invalid or unsupported input, 4 I/O error, 130 interrupted\n";

static const char usage_apply[] =
    "usage: widen apply INPUT -o OUTPUT [selection] [transform] [output options]\n"
    "\n"
    "selection:\n"
    "  -t, --tensor NAME     tensor to transform (repeatable); a name with * ? [ that is no tensor's\n"
    "                        is a glob pattern ('*.conv1.weight', quoted), every match transformed;\n"
    "                        without -t, the unique floating-point tensor of rank >= 3 whose size\n"
    "                        along --axis is --from\n"
    "  --from C              channel count auto-detection looks for (default 3)\n"
    "  --axis A              channel axis (default 1, and -2 for an .npz: JAX/Flax HWIO kernels;\n"
    "                        negative counts from the end)\n"
    "\n"
    "transform (--to or --map, both if they agree on N; and/or --cast; none for a plain --format\n"
    "conversion):\n"
    "  --to N                widen to N channels; old channels land at --at P.. (default 0)\n"
    "  --at P                position of the first old channel\n"
    "  --init MODE           new channels: zeros (default), const:V, mean (of the old channels),\n"
    "                        copy:K, normal:STD[:SEED] (seeded, reproducible); or the whole tensor:\n"
    "                        timm (channel i = i mod C, scaled by C/N; the sum for N = 1), cyclic\n"
    "  --map LIST            one entry per output channel: K (copy input channel K), K*S (scaled),\n"
    "                        zero, const:V, mean, sum, normal:STD[:SEED]\n"
    "                        e.g. --map 2,1,0 (BGR<->RGB), --map 0,1,2 (drop alpha), --map 0,1,2,mean\n"
    "  --cast f32|f16|bf16   cast every F32/F16/BF16 tensor (round to nearest even)\n"
    "\n"
    "output options:\n"
    "  -o, --output FILE     the output (required); never the input. -: standard output, written\n"
    "                        front to back as a pipe takes it (safetensors or pt: --format, else\n"
    "                        the input's; refused at a terminal, for npz and for model folders)\n"
    "  --format safetensors|pt|npz\n"
    "                        output format (default: from OUTPUT's extension: .safetensors, .pt,\n"
    "                        .pth, .bin, or .npz; else the input's); alone, a conversion. npz: as\n"
    "                        np.savez writes it, for files (model folders: safetensors or pt)\n"
    "  --manifest FILE       write a JSON manifest: version, transform, XXH3-128 of every tensor\n"
    "  --threads N           worker threads (default: online CPUs)\n"
    "  --progress, --no-progress\n"
    "                        progress bar on stderr (default: when stderr is a terminal)\n"
    "  --no-fsync            skip the fsync before the output is renamed into place\n"
    "  --force               replace an existing OUTPUT file\n"
    "  --dry-run             print the plan (tensors that change, bytes to write and to copy, the\n"
    "                        output and its format) and write nothing\n"
    "  -q, --quiet           no warnings (errors still print)\n"
    "  --json                on success, print what was done as one JSON document on stdout\n"
    "                        (tensors changed and copied; bytes cloned, copied and written)\n"
    "\n"
    "At a terminal, a successful apply ends with one summary line on stderr. Untouched bytes are\n"
    "cloned where the file system can (XFS, btrfs, OpenZFS, NFS 4.2), else copied in the kernel.\n"
    "\n"
    "model folders (INPUT a folder or an *.index.json; OUTPUT a new folder):\n"
    "  --norm-fill MEAN:STD  normalisation values of new channels in the configs (default: the\n"
    "                        mean of the old channels' values)\n"
    "  --no-config           leave config.json and preprocessor_config.json as they are\n";

static const char usage_inspect[] =
    "usage: widen inspect FILE [--json] [--hash] [--threads N] [--progress|--no-progress]\n"
    "\n"
    "Lists every tensor: name, dtype, shape, byte size, and its XXH3-128 with --hash. For a model\n"
    "folder: its weight files, what its configs say about input channels, and the model's tensors.\n"
    "  --json    print one JSON document\n"
    "  --hash    hash every tensor (reads the whole file)\n"
    "  --threads N, --progress, --no-progress: as for widen hash\n";

static const char usage_verify[] =
    "usage: widen verify INPUT OUTPUT [--manifest FILE] [--json] [--threads N] [--progress|--no-progress]\n"
    "\n"
    "Proves OUTPUT is INPUT with the transform applied: untouched tensors byte-identical (or equal\n"
    "after the recorded cast), every transformed channel equal to its source bit for bit, every\n"
    "filled channel exactly the fill. The transform comes from --manifest, else from the 'widen'\n"
    "key apply writes into OUTPUT's metadata (an .npz's archive comment). With --manifest the\n"
    "recorded hashes are checked too.\n"
    "For model folders: every shard, the index, every config change, every other file\n"
    "byte-identical, nothing extra or missing.\n"
    "Exit 0 when it holds, 1 when something differs.\n"
    "  --threads N    worker threads (default: online CPUs; the verdict does not depend on it)\n"
    "  --progress     a progress line on stderr (default: when stderr is a terminal)\n";

static const char usage_hash[] =
    "usage: widen hash FILE [--json] [--threads N] [--progress|--no-progress]\n"
    "\n"
    "Prints the XXH3-128 of the whole file (as xxhsum -H2) and of each tensor's bytes; for a model\n"
    "folder, of each weight file and of each of the model's tensors.\n"
    "  --threads N    worker threads (default: online CPUs; the hashes do not depend on it)\n"
    "  --progress     a progress line on stderr (default: when stderr is a terminal)\n";

/* ---------------------------------------------------------------------------------------------- */
/* Progress                                                                                         */

typedef struct progress_state {
    int show;
    int fsync; /* once every byte is written, the output is fsynced: show that phase */
    const char *phase; /* a name for the run ("inflating"), or NULL */
    double start, last;
    uint64_t total; /* the last total reported */
} progress_state;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void human(double bytes, char *out, size_t size)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

static int quiet; /* -q: no warnings (errors still print) */

static void on_warning(void *user, const char *message)
{
    (void)user;
    if (!quiet) fprintf(stderr, "widen: warning: %s\n", message);
}

static int on_progress(void *user, uint64_t done, uint64_t total)
{
    progress_state *p = user;
    p->total = total;
    if (p->show) {
        double t = now();
        if (done == total && total && p->fsync) {
            char all[32];
            human((double)total, all, sizeof all);
            fprintf(stderr, "\r\033[K100.0%%  %s / %s  syncing", all, all);
            p->last = t;
        } else if (t - p->last >= 0.1 || done == total) {
            char d[32], all[32], rate[32];
            double secs = t - p->start, speed = secs > 0 ? done / secs : 0;
            human((double)done, d, sizeof d);
            human((double)total, all, sizeof all);
            human(speed, rate, sizeof rate);
            double eta = speed > 0 ? (double)(total - done) / speed : 0;
            fprintf(stderr, "\r\033[K%5.1f%%  %s / %s  %s/s  ETA %.0fs%s%s", total ? 100.0 * done / total : 100.0, d,
                    all, rate, eta, p->phase ? "  " : "", p->phase ? p->phase : "");
            p->last = t;
        }
    }
    return 0;
}

static void progress_end(progress_state *p)
{
    if (p->show) fputs("\r\033[K", stderr);
}

/* widen_model_open, with a progress line while it reads data (an .npz's members inflated). */
static widen_status open_model(const char *path, int show, widen_model **model, widen_error *err)
{
    progress_state ps = {.show = show, .phase = "inflating", .start = now()};
    widen_open_options o;
    widen_open_options_init(&o, sizeof o);
    o.progress = on_progress;
    o.progress_user = &ps;
    widen_status st = widen_model_open_with(path, &o, model, err);
    if (ps.total) progress_end(&ps); /* (a line only where it reported) */
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* inspect and hash                                                                                 */

/* The tensor's element bytes (a strided torch tensor's nbytes is 0: its bytes are not one run). */
static uint64_t tensor_bytes(const widen_checkpoint *c, size_t index)
{
    const widen_tensor_info *t = widen_tensor_at(c, index);
    if (!widen_tensor_strided(c, index)) return t->nbytes;
    uint64_t n = widen_dtype_bits(t->dtype);
    for (int d = 0; d < t->rank; d++) n *= t->shape[d];
    return n / 8;
}

static void shape_text(const widen_tensor_info *t, char *out, size_t size)
{
    size_t used = (size_t)snprintf(out, size, "[");
    for (int d = 0; d < t->rank && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
    if (used < size) snprintf(out + used, size - used, "]");
}

static json_t *shape_json(const widen_tensor_info *t)
{
    json_t *a = json_array();
    for (int d = 0; d < t->rank; d++) json_array_append_new(a, json_integer((json_int_t)t->shape[d]));
    return a;
}

static int print_json(json_t *root)
{
    char *text = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!text) return fail(WIDEN_EIO, "out of memory");
    puts(text);
    free(text);
    return 0;
}

/* hash, inspect --hash and verify: --threads, --progress / --no-progress (-1: at a terminal) */
static unsigned read_threads;
static int read_progress = -1;

static int parse_uint(const char *text, const char *flag, unsigned long long max, unsigned long long *out);

/* The options hash, inspect and verify share; 0, or the exit status of a bad one. */
static int read_option(int o, const char *arg, const char *command)
{
    unsigned long long n = 0;
    if (o == 'T') {
        if (parse_uint(arg, "--threads", 1024, &n)) return WIDEN_EUSAGE;
        read_threads = (unsigned)n;
    } else if (o == 'P' || o == 'N') {
        read_progress = o == 'P';
    } else {
        return fail(WIDEN_EUSAGE, "%s: bad option (see widen %s --help)", command, command);
    }
    return 0;
}

#define READ_OPTIONS {"threads", required_argument, 0, 'T'}, {"progress", no_argument, 0, 'P'}, \
                     {"no-progress", no_argument, 0, 'N'}

static int hash_all(widen_checkpoint *c, widen_hash128 *file, widen_hash128 **tensors)
{
    widen_error err;
    *tensors = calloc(widen_tensor_count(c) + 1, sizeof **tensors);
    if (!*tensors) return fail(WIDEN_EIO, "out of memory");
    progress_state ps = {.show = read_progress < 0 ? isatty(2) : read_progress, .start = now()};
    widen_hash_options o;
    widen_hash_options_init(&o, sizeof o);
    o.threads = read_threads;
    o.progress = on_progress;
    o.progress_user = &ps;
    widen_status st = widen_hash_checkpoint(c, file, *tensors, &o, &err);
    progress_end(&ps);
    if (st) {
        free(*tensors);
        *tensors = NULL;
        return fail_err(&err);
    }
    return 0;
}

static const widen_checkpoint *sort_ckpt;

static int by_storage(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(widen_tensor_storage(sort_ckpt, x), widen_tensor_storage(sort_ckpt, y));
    return c ? c : (x > y) - (x < y);
}

/* One note per storage that several tensors view, in the order of their first tensor. */
static void print_shared_storages(const widen_checkpoint *c)
{
    size_t n = widen_tensor_count(c), *order = malloc((n + 1) * sizeof *order), groups = 0;
    if (!order || n == 0 || !widen_tensor_storage(c, 0)) {
        free(order);
        return;
    }
    for (size_t i = 0; i < n; i++) order[i] = i;
    sort_ckpt = c;
    qsort(order, n, sizeof *order, by_storage);
    size_t *first = malloc((n + 1) * sizeof *first); /* group starts, then sorted by their first tensor */
    for (size_t i = 0; first && i < n;) {
        size_t j = i + 1;
        while (j < n && strcmp(widen_tensor_storage(c, order[j]), widen_tensor_storage(c, order[i])) == 0) j++;
        if (j - i > 1) first[groups++] = i;
        i = j;
    }
    for (size_t g = 0; first && g < groups; g++) {
        size_t i = first[g];
        printf("note: storage %s is shared by", shown(widen_tensor_storage(c, order[i]), 0));
        for (size_t k = i; k < n && strcmp(widen_tensor_storage(c, order[k]), widen_tensor_storage(c, order[i])) == 0; k++)
            printf(" %s", shown(widen_tensor_at(c, order[k])->name, 1));
        printf(" (a transformed one gets a storage of its own)\n");
    }
    free(first);
    free(order);
}

/* A model folder: its files, what its configs say about channels, and the model's tensors. */
static int print_folder(widen_model *m, const char *path, int json, int want_hash, int is_hash)
{
    size_t files = widen_model_file_count(m), n = widen_model_tensor_count(m);
    widen_hash128 *file_hashes = calloc(files + 1, sizeof *file_hashes), **tensor_hashes = calloc(files + 1, sizeof *tensor_hashes);
    int rc = file_hashes && tensor_hashes ? 0 : fail(WIDEN_EIO, "out of memory");
    for (size_t f = 0; f < files && want_hash && !rc; f++)
        rc = hash_all(widen_model_file(m, f), &file_hashes[f], &tensor_hashes[f]);
    uint64_t tensor_total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t f;
        widen_model_tensor_at(m, i, &f);
        widen_checkpoint *c = widen_model_file(m, f);
        const widen_tensor_info *t = widen_model_tensor_at(m, i, NULL);
        tensor_total += tensor_bytes(c, (size_t)(t - widen_tensor_at(c, 0)));
    }
    char hex[33], shape[512];
    if (rc) {
    } else if (json) {
        json_t *root = json_object(), *fl = json_array(), *tl = json_array(), *notes = json_array();
        json_object_set_new(root, "folder", json_string(path));
        json_object_set_new(root, "size", json_integer((json_int_t)widen_model_size(m)));
        json_object_set_new(root, "tensor_bytes", json_integer((json_int_t)tensor_total));
        for (size_t f = 0; f < files; f++) {
            widen_checkpoint *c = widen_model_file(m, f);
            json_t *o = json_object();
            json_object_set_new(o, "file", json_string(widen_model_file_name(m, f)));
            json_object_set_new(o, "format", json_string(widen_checkpoint_format(c)));
            json_object_set_new(o, "size", json_integer((json_int_t)widen_checkpoint_size(c)));
            json_object_set_new(o, "tensors", json_integer((json_int_t)widen_tensor_count(c)));
            if (want_hash) {
                widen_hash128_hex(file_hashes[f], hex);
                json_object_set_new(o, "xxh3_128", json_string(hex));
            }
            json_array_append_new(fl, o);
        }
        for (size_t i = 0; i < widen_model_channel_note_count(m); i++)
            json_array_append_new(notes, json_string(widen_model_channel_note(m, i)));
        for (size_t i = 0; i < n; i++) {
            size_t f;
            const widen_tensor_info *t = widen_model_tensor_at(m, i, &f);
            widen_checkpoint *c = widen_model_file(m, f);
            size_t k = (size_t)(t - widen_tensor_at(c, 0));
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(widen_model_tensor_name(m, i)));
            json_object_set_new(o, "file", json_string(widen_model_file_name(m, f)));
            if (!is_hash) {
                json_object_set_new(o, "dtype", json_string(widen_dtype_name(t->dtype)));
                json_object_set_new(o, "shape", shape_json(t));
                json_object_set_new(o, "bytes", json_integer((json_int_t)tensor_bytes(c, k)));
            }
            if (want_hash) {
                widen_hash128_hex(tensor_hashes[f][k], hex);
                json_object_set_new(o, "xxh3_128", json_string(hex));
            }
            json_array_append_new(tl, o);
        }
        json_object_set_new(root, "files", fl);
        json_t *left = json_array();
        for (size_t i = 0; i < widen_model_left_out_count(m); i++)
            json_array_append_new(left, json_string(widen_model_left_out(m, i)));
        json_object_set_new(root, "left_out", left);
        if (!is_hash) json_object_set_new(root, "channels", notes);
        else json_decref(notes);
        json_object_set_new(root, "tensors", tl);
        rc = print_json(root);
    } else if (is_hash) {
        for (size_t f = 0; f < files; f++) {
            widen_hash128_hex(file_hashes[f], hex);
            printf("%s  %s\n", hex, shown(widen_model_file_name(m, f), 0));
        }
        for (size_t i = 0; i < n; i++) {
            size_t f;
            const widen_tensor_info *t = widen_model_tensor_at(m, i, &f);
            widen_hash128_hex(tensor_hashes[f][t - widen_tensor_at(widen_model_file(m, f), 0)], hex);
            printf("%s  %s\n", hex, shown(widen_model_tensor_name(m, i), 0));
        }
    } else {
        printf("%s: model folder, %zu weight file%s, %zu tensors, %llu bytes of tensors, %llu bytes in all\n",
               shown(path, 0), files, files == 1 ? "" : "s", n, (unsigned long long)tensor_total,
               (unsigned long long)widen_model_size(m));
        for (size_t f = 0; f < files; f++) {
            widen_checkpoint *c = widen_model_file(m, f);
            printf("  file %s: %s, %zu tensors, %llu bytes%s%s\n", shown(widen_model_file_name(m, f), 0),
                   widen_checkpoint_format(c), widen_tensor_count(c), (unsigned long long)widen_checkpoint_size(c),
                   want_hash ? ", XXH3-128 " : "", want_hash ? (widen_hash128_hex(file_hashes[f], hex), hex) : "");
        }
        for (size_t i = 0; i < widen_model_left_out_count(m); i++)
            printf("  left out: %s (weights the model is not made of: a variant, another format or index)\n",
                   shown(widen_model_left_out(m, i), 0));
        for (size_t i = 0; i < widen_model_channel_note_count(m); i++)
            printf("  channels: %s\n", shown(widen_model_channel_note(m, i), 0));
        int wn = 4, ws = 5;
        for (size_t i = 0; i < n; i++) {
            shape_text(widen_model_tensor_at(m, i, NULL), shape, sizeof shape);
            if ((int)strlen(shown(widen_model_tensor_name(m, i), 0)) > wn) wn = (int)strlen(shown(widen_model_tensor_name(m, i), 0));
            if ((int)strlen(shape) > ws) ws = (int)strlen(shape);
            if (wn > 60) wn = 60;
            if (ws > 40) ws = 40;
        }
        printf("%-*s  %-11s  %-*s  %14s  %s%s\n", wn, "NAME", "DTYPE", ws, "SHAPE", "BYTES", "FILE",
               want_hash ? "  XXH3-128" : "");
        for (size_t i = 0; i < n; i++) {
            size_t f;
            const widen_tensor_info *t = widen_model_tensor_at(m, i, &f);
            widen_checkpoint *c = widen_model_file(m, f);
            size_t k = (size_t)(t - widen_tensor_at(c, 0));
            shape_text(t, shape, sizeof shape);
            if (want_hash) widen_hash128_hex(tensor_hashes[f][k], hex);
            printf("%-*s  %-11s  %-*s  %14llu  %s%s%s\n", wn, shown(widen_model_tensor_name(m, i), 0),
                   widen_dtype_name(t->dtype), ws, shape, (unsigned long long)tensor_bytes(c, k),
                   shown(widen_model_file_name(m, f), 1), want_hash ? "  " : "", want_hash ? hex : "");
        }
    }
    for (size_t f = 0; tensor_hashes && f < files; f++) free(tensor_hashes[f]);
    free(tensor_hashes);
    free(file_hashes);
    return rc;
}

static int cmd_inspect_or_hash(int argc, char **argv, int is_hash)
{
    int json = 0, want_hash = is_hash;
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"hash", no_argument, 0, 'H'}, {"help", no_argument, 0, 'h'}, READ_OPTIONS,
        {0, 0, 0, 0}};
    int o, rc;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'j') json = 1;
        else if (o == 'H' && !is_hash) want_hash = 1;
        else if (o == 'h') return fputs(is_hash ? usage_hash : usage_inspect, stdout), 0;
        else if (o == '?' || (o == 'H' && is_hash))
            return fail(WIDEN_EUSAGE, "%s: unknown option (see widen %s --help)", is_hash ? "hash" : "inspect",
                        is_hash ? "hash" : "inspect");
        else if ((rc = read_option(o, optarg, is_hash ? "hash" : "inspect"))) return rc;
    }
    if (argc - optind != 1)
        return fail(WIDEN_EUSAGE, "%s takes one FILE (see widen %s --help)", is_hash ? "hash" : "inspect",
                    is_hash ? "hash" : "inspect");
    const char *path = argv[optind];
    widen_error err;
    widen_model *model;
    if (open_model(path, read_progress < 0 ? isatty(2) : read_progress, &model, &err)) return fail_err(&err);
    if (widen_model_is_folder(model)) {
        int folder_rc = print_folder(model, path, json, want_hash, is_hash);
        widen_model_close(model);
        return folder_rc;
    }
    widen_checkpoint *c = widen_model_file(model, 0);
    widen_hash128 file_hash = {0}, *hashes = NULL;
    rc = 0;
    if (want_hash && (rc = hash_all(c, &file_hash, &hashes))) goto done;
    size_t n = widen_tensor_count(c);
    char hex[33], shape[512];
    if (json) {
        json_t *root = json_object(), *tensors = json_array(), *meta = json_object();
        json_object_set_new(root, "file", json_string(path));
        json_object_set_new(root, "format", json_string(widen_checkpoint_format(c)));
        json_object_set_new(root, "size", json_integer((json_int_t)widen_checkpoint_size(c)));
        if (want_hash) {
            widen_hash128_hex(file_hash, hex);
            json_object_set_new(root, "xxh3_128", json_string(hex));
        }
        for (size_t i = 0; i < widen_metadata_count(c); i++) {
            const char *k, *v;
            widen_metadata_at(c, i, &k, &v);
            json_object_set_new(meta, k, json_string(v));
        }
        if (!is_hash) json_object_set_new(root, "metadata", meta);
        else json_decref(meta);
        for (size_t i = 0; i < n; i++) {
            const widen_tensor_info *t = widen_tensor_at(c, i);
            json_t *obj = json_object();
            json_object_set_new(obj, "name", json_string(t->name));
            if (!is_hash) {
                json_object_set_new(obj, "dtype", json_string(widen_dtype_name(t->dtype)));
                json_object_set_new(obj, "shape", shape_json(t));
                json_object_set_new(obj, "bytes", json_integer((json_int_t)tensor_bytes(c, i)));
                if (widen_tensor_strided(c, i)) json_object_set_new(obj, "strided", json_true());
                json_object_set_new(obj, "offset", json_integer((json_int_t)t->offset));
                if (widen_tensor_storage(c, i))
                    json_object_set_new(obj, "storage", json_string(widen_tensor_storage(c, i)));
            }
            if (want_hash) {
                widen_hash128_hex(hashes[i], hex);
                json_object_set_new(obj, "xxh3_128", json_string(hex));
            }
            json_array_append_new(tensors, obj);
        }
        json_object_set_new(root, "tensors", tensors);
        rc = print_json(root);
    } else if (is_hash) {
        widen_hash128_hex(file_hash, hex);
        printf("%s  %s\n", hex, shown(path, 0));
        for (size_t i = 0; i < n; i++) {
            widen_hash128_hex(hashes[i], hex);
            printf("%s  %s\n", hex, shown(widen_tensor_at(c, i)->name, 0));
        }
    } else {
        printf("%s: %s, %zu tensors, %llu bytes\n", shown(path, 0), widen_checkpoint_format(c), n,
               (unsigned long long)widen_checkpoint_size(c));
        for (size_t i = 0; i < widen_metadata_count(c); i++) {
            const char *k, *v;
            widen_metadata_at(c, i, &k, &v);
            printf("  metadata %s = %s\n", shown(k, 0), shown(v, 1));
        }
        int wn = 4, ws = 5;
        for (size_t i = 0; i < n; i++) {
            const widen_tensor_info *t = widen_tensor_at(c, i);
            shape_text(t, shape, sizeof shape);
            /* a column as wide as its widest entry, up to a limit: a name of megabytes must not pad
             * every other row to its width */
            if ((int)strlen(shown(t->name, 0)) > wn) wn = (int)strlen(shown(t->name, 0));
            if ((int)strlen(shape) > ws) ws = (int)strlen(shape);
            if (wn > 60) wn = 60;
            if (ws > 40) ws = 40;
        }
        printf("%-*s  %-11s  %-*s  %14s%s\n", wn, "NAME", "DTYPE", ws, "SHAPE", "BYTES", want_hash ? "  XXH3-128" : "");
        for (size_t i = 0; i < n; i++) {
            const widen_tensor_info *t = widen_tensor_at(c, i);
            shape_text(t, shape, sizeof shape);
            if (want_hash) widen_hash128_hex(hashes[i], hex);
            printf("%-*s  %-11s  %-*s  %14llu%s%s\n", wn, shown(t->name, 0), widen_dtype_name(t->dtype), ws, shape,
                   (unsigned long long)tensor_bytes(c, i), want_hash ? "  " : "", want_hash ? hex : "");
        }
        if (want_hash) {
            widen_hash128_hex(file_hash, hex);
            printf("file XXH3-128 %s\n", hex);
        }
        /* storages several tensors view: widening one of them gives it a storage of its own */
        print_shared_storages(c);
    }
done:
    free(hashes);
    widen_model_close(model);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* apply                                                                                            */

static int parse_uint(const char *text, const char *flag, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (*text < '0' || *text > '9') return fail(WIDEN_EUSAGE, "%s: '%s' is not a non-negative integer", flag, text);
    unsigned long long v = strtoull(text, &end, 10);
    if (*end || v > max) return fail(WIDEN_EUSAGE, "%s: '%s' is not an integer from 0 to %llu", flag, text, max);
    *out = v;
    return 0;
}

enum { OPT_FROM = 256, OPT_AXIS, OPT_TO, OPT_AT, OPT_INIT, OPT_MAP, OPT_CAST, OPT_FORMAT, OPT_MANIFEST, OPT_THREADS,
       OPT_PROGRESS, OPT_NO_PROGRESS, OPT_NO_FSYNC, OPT_FORCE, OPT_NORM_FILL, OPT_NO_CONFIG, OPT_DRY_RUN, OPT_JSON };

/* What messages and the manifest call standard output (-o -). */
static const char stdout_name[] = "<stdout>";

typedef struct apply_args {
    const char *input, *output, *init, *map, *cast, *format, *manifest;
    const char **tensors;
    size_t ntensors;
    unsigned long long from, to, at, threads;
    long axis;
    int have_to, have_at, have_axis, progress, fsync, force, no_config, norm_fill, dry_run, json;
    double norm_mean, norm_std;
} apply_args;

/* 1 if [s, end) is a decimal number as JSON writes one, with an optional + (no hex, no spaces, no
 * inf or nan). */
static int decimal(const char *s, const char *end)
{
    const char *p = s;
    if (p < end && (*p == '-' || *p == '+')) p++;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    int whole = p > digits;
    if (p < end && *p == '.') {
        const char *frac = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        whole |= p > frac;
    }
    if (!whole) return 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '-' || *p == '+')) p++;
        const char *exp = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == exp) return 0;
    }
    return p == end;
}

static int parse_apply(int argc, char **argv, apply_args *a)
{
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'},   {"tensor", required_argument, 0, 't'},
        {"from", required_argument, 0, OPT_FROM}, {"axis", required_argument, 0, OPT_AXIS},
        {"to", required_argument, 0, OPT_TO},     {"at", required_argument, 0, OPT_AT},
        {"init", required_argument, 0, OPT_INIT}, {"map", required_argument, 0, OPT_MAP},
        {"cast", required_argument, 0, OPT_CAST}, {"format", required_argument, 0, OPT_FORMAT},
        {"manifest", required_argument, 0, OPT_MANIFEST}, {"threads", required_argument, 0, OPT_THREADS},
        {"progress", no_argument, 0, OPT_PROGRESS}, {"no-progress", no_argument, 0, OPT_NO_PROGRESS},
        {"no-fsync", no_argument, 0, OPT_NO_FSYNC}, {"force", no_argument, 0, OPT_FORCE},
        {"norm-fill", required_argument, 0, OPT_NORM_FILL}, {"no-config", no_argument, 0, OPT_NO_CONFIG},
        {"dry-run", no_argument, 0, OPT_DRY_RUN}, {"quiet", no_argument, 0, 'q'}, {"json", no_argument, 0, OPT_JSON},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    a->from = 3;
    a->axis = 1;
    a->progress = -1;
    a->fsync = 1;
    a->tensors = calloc((size_t)argc + 1, sizeof *a->tensors);
    if (!a->tensors) return fail(WIDEN_EIO, "out of memory");
    int o, rc = 0;
    while ((o = getopt_long(argc, argv, "o:t:qh", opts, NULL)) != -1 && !rc) {
        switch (o) {
        case 'o': a->output = optarg; break;
        case 't': a->tensors[a->ntensors++] = optarg; break;
        case OPT_FROM: rc = parse_uint(optarg, "--from", UINT32_MAX, &a->from); break;
        case OPT_AXIS: {
            char *end;
            a->have_axis = 1;
            a->axis = strtol(optarg, &end, 10);
            if (!*optarg || *end || a->axis < -WIDEN_MAX_RANK || a->axis >= WIDEN_MAX_RANK)
                rc = fail(WIDEN_EUSAGE, "--axis: '%s' is not an axis", optarg);
            break;
        }
        case OPT_TO: a->have_to = 1; rc = parse_uint(optarg, "--to", UINT32_MAX, &a->to); break;
        case OPT_AT: a->have_at = 1; rc = parse_uint(optarg, "--at", UINT32_MAX, &a->at); break;
        case OPT_INIT: a->init = optarg; break;
        case OPT_MAP: a->map = optarg; break;
        case OPT_CAST: a->cast = optarg; break;
        case OPT_FORMAT: a->format = optarg; break;
        case OPT_MANIFEST: a->manifest = optarg; break;
        case OPT_THREADS: rc = parse_uint(optarg, "--threads", 1024, &a->threads); break;
        case OPT_PROGRESS: a->progress = 1; break;
        case OPT_NO_PROGRESS: a->progress = 0; break;
        case OPT_NO_FSYNC: a->fsync = 0; break;
        case OPT_FORCE: a->force = 1; break;
        case OPT_NO_CONFIG: a->no_config = 1; break;
        case OPT_DRY_RUN: a->dry_run = 1; break;
        case OPT_JSON: a->json = 1; break;
        case 'q': quiet = 1; break;
        case OPT_NORM_FILL: {
            char *colon = strchr(optarg, ':');
            a->norm_fill = 1;
            if (!colon || !decimal(optarg, colon) || !decimal(colon + 1, colon + 1 + strlen(colon + 1)))
                rc = fail(WIDEN_EUSAGE, "--norm-fill: '%s' is not MEAN:STD (two decimal numbers)", optarg);
            else {
                a->norm_mean = strtod(optarg, NULL);
                a->norm_std = strtod(colon + 1, NULL);
                if (!isfinite(a->norm_mean) || !isfinite(a->norm_std))
                    rc = fail(WIDEN_EUSAGE, "--norm-fill: '%s' is out of range", optarg);
            }
            break;
        }
        case 'h': fputs(usage_apply, stdout); return -1;
        default: return fail(WIDEN_EUSAGE, "apply: bad option (see widen apply --help)");
        }
    }
    if (rc) return rc;
    if (argc - optind != 1) return fail(WIDEN_EUSAGE, "apply takes one INPUT (see widen apply --help)");
    a->input = argv[optind];
    if (!a->output) return fail(WIDEN_EUSAGE, "apply needs -o OUTPUT");
    if (a->json && strcmp(a->output, "-") == 0)
        return fail(WIDEN_EUSAGE, "--json and -o - both want standard output: name an OUTPUT file");
    if (a->json && a->dry_run) return fail(WIDEN_EUSAGE, "--json reports what apply did; --dry-run does nothing");
    if (a->map && (a->init || a->have_at)) return fail(WIDEN_EUSAGE, "--init and --at go with --to, not --map");
    if ((a->init || a->have_at) && !a->have_to) return fail(WIDEN_EUSAGE, "--init and --at go with --to");
    if (a->ntensors && !a->have_to && !a->map) return fail(WIDEN_EUSAGE, "-t selects tensors for --to or --map");
    if (a->norm_fill && a->no_config) return fail(WIDEN_EUSAGE, "--norm-fill sets values in the configs that --no-config leaves alone");
    return 0;
}

/* Levenshtein distance between a and b, or more than `limit` (then any value > limit). */
static size_t edit_distance(const char *a, const char *b, size_t limit)
{
    size_t n = strlen(a), m = strlen(b);
    if ((n > m ? n - m : m - n) > limit) return limit + 1;
    size_t *row = malloc((m + 1) * sizeof *row);
    if (!row) return limit + 1;
    for (size_t j = 0; j <= m; j++) row[j] = j;
    for (size_t i = 1; i <= n; i++) {
        size_t diag = row[0], best = row[0] = i;
        for (size_t j = 1; j <= m; j++) {
            size_t up = row[j], v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
            if (v < best) best = v;
        }
        if (best > limit) { /* every later row is at least this far */
            free(row);
            return limit + 1;
        }
    }
    size_t d = row[m];
    free(row);
    return d;
}

/* "; did you mean 'a', 'b' or 'c'?": up to 3 of the model's names nearest `name` in edit distance
 * (at most a quarter of its length, and at least 2), nearest first, ties in the model's order; ""
 * when none is that near. */
static void suggest(const widen_model *c, const char *name, char *out, size_t size)
{
    enum { MAX_SUGGEST = 3 };
    size_t len = strlen(name), limit = len / 4 > 2 ? len / 4 : 2, best[MAX_SUGGEST], dist[MAX_SUGGEST], found = 0;
    for (size_t i = 0; i < widen_model_tensor_count(c); i++) {
        size_t d = edit_distance(name, widen_model_tensor_name(c, i), limit);
        if (d > limit) continue;
        size_t at = found < MAX_SUGGEST ? found++ : MAX_SUGGEST;
        if (at == MAX_SUGGEST && d >= dist[MAX_SUGGEST - 1]) continue;
        if (at == MAX_SUGGEST) at = MAX_SUGGEST - 1;
        while (at > 0 && dist[at - 1] > d) { /* ties keep file order */
            best[at] = best[at - 1];
            dist[at] = dist[at - 1];
            at--;
        }
        best[at] = i;
        dist[at] = d;
    }
    *out = 0;
    size_t used = 0;
    for (size_t k = 0; k < found && used < size; k++)
        used += (size_t)snprintf(out + used, size - used, "%s'%s'%s", k == 0 ? "; did you mean " : k + 1 == found ? " or " : ", ",
                                 widen_model_tensor_name(c, best[k]), k + 1 == found ? "?" : "");
}

/* The tensors -t selects: a name that is a tensor's is that tensor (even if it holds * ? or [);
 * else a name with glob characters is an fnmatch(3) pattern, every tensor it matches selected once. */
typedef struct selection {
    struct selected {
        size_t index;
        const char *pattern; /* the pattern that matched it, NULL for a name */
    } *items;
    size_t count;
} selection;

/* 1 if tensor `index` is selected already; *by_pattern: whether a pattern selected it. */
static int selected_already(const selection *sel, size_t index, int *by_pattern)
{
    for (size_t i = 0; i < sel->count; i++)
        if (sel->items[i].index == index) return *by_pattern = sel->items[i].pattern != NULL, 1;
    return 0;
}

static int select_tensors(const apply_args *a, const widen_model *c, const char **names, size_t count, selection *sel)
{
    size_t n = widen_model_tensor_count(c), cap = count + 16;
    sel->items = malloc(cap * sizeof *sel->items);
    if (!sel->items) return fail(WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < count; i++) {
        long k = widen_model_tensor_find(c, names[i]);
        int pattern = k < 0 && strpbrk(names[i], "*?[") != NULL;
        if (k < 0 && !pattern) {
            char hint[1024];
            suggest(c, names[i], hint, sizeof hint);
            return fail(WIDEN_EUSAGE, "%s: no tensor named '%s'%s", a->input, names[i], hint);
        }
        size_t matched = 0;
        for (size_t j = pattern ? 0 : (size_t)k; j < (pattern ? n : (size_t)k + 1); j++) {
            if (pattern && fnmatch(names[i], widen_model_tensor_name(c, j), 0) != 0) continue;
            matched++;
            /* a tensor two patterns (or a pattern and its name) select is selected once; a name given
             * twice is the library's error, as before */
            int by_pattern = 0;
            if (selected_already(sel, j, &by_pattern) && (pattern || by_pattern)) continue;
            if (sel->count == cap) {
                struct selected *grown = realloc(sel->items, (cap *= 2) * sizeof *grown);
                if (!grown) return fail(WIDEN_EIO, "out of memory");
                sel->items = grown;
            }
            sel->items[sel->count++] = (struct selected){.index = j, .pattern = pattern ? names[i] : NULL};
        }
        if (pattern && matched == 0) return fail(WIDEN_EUSAGE, "%s: no tensor matches the pattern '%s'", a->input, names[i]);
    }
    return 0;
}

/* Adds the map of every selected tensor to the transform. */
static int build_maps(const apply_args *a, widen_model *c, widen_transform *tr)
{
    widen_error err;
    size_t count = a->ntensors;
    const char **names = a->tensors, *detected;
    size_t found[16];
    if (count == 0) {
        size_t n = widen_model_find_candidates(c, (int)a->axis, a->from, found, 16);
        if (n != 1) {
            char list[768] = "";
            size_t used = 0;
            for (size_t i = 0; i < n && i < 16 && used < sizeof list; i++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                         widen_model_tensor_name(c, found[i]));
            if (n == 0)
                return fail(WIDEN_EUSAGE, "%s: no floating-point tensor of rank >= 3 has %llu channels on axis %ld; "
                            "name one with -t", a->input, a->from, a->axis);
            return fail(WIDEN_EUSAGE, "%s: %zu tensors have %llu channels on axis %ld (%s%s); name them with -t",
                        a->input, n, a->from, a->axis, list, n > 16 ? ", ..." : "");
        }
        detected = widen_model_tensor_name(c, found[0]);
        names = &detected;
        count = 1;
        /* the shape rule matched others that what the folder says set aside: name them */
        size_t others = 0;
        char list[600] = "";
        for (size_t i = 0; i < widen_model_tensor_count(c); i++) {
            const widen_tensor_info *t = widen_model_tensor_at(c, i, NULL);
            int axis = (int)(a->axis < 0 ? a->axis + t->rank : a->axis);
            if (i == found[0] || !widen_dtype_is_float(t->dtype) || t->rank < 3 || axis < 0 || axis >= t->rank ||
                t->shape[axis] != a->from)
                continue;
            size_t used = strlen(list);
            if (others++ < 4) snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", widen_model_tensor_name(c, i));
        }
        if (others && !quiet)
            fprintf(stderr, "widen: warning: %s: widening %s, which the folder's configs name; %zu other tensor%s %s %llu "
                    "channels on axis %ld and %s not widened: %s%s (add -t for each to widen %s too)\n", shown(a->input, 0),
                    shown(detected, 1), others, others == 1 ? "" : "s", others == 1 ? "has" : "have", a->from, a->axis,
                    others == 1 ? "is" : "are", shown(list, 2), others > 4 ? ", ..." : "", others == 1 ? "it" : "them");
    }
    widen_map_entry *given = NULL;
    widen_init init = {.kind = WIDEN_INIT_FILL, .fill = {.kind = WIDEN_MAP_ZERO}};
    size_t given_n = 0;
    if (a->map && widen_parse_map(a->map, &given, &given_n, &err)) return fail_flag("--map", &err);
    if (a->map && a->have_to && given_n != a->to) {
        free(given);
        return fail(WIDEN_EUSAGE, "--map has %zu entries but --to asks for %llu channels", given_n, a->to);
    }
    if (a->init && widen_parse_init(a->init, &init, &err)) {
        free(given);
        return fail_flag("--init", &err);
    }
    selection sel = {0};
    int rc = select_tensors(a, c, names, count, &sel);
    for (size_t i = 0; i < sel.count && !rc; i++) {
        long k = (long)sel.items[i].index;
        const char *pattern = sel.items[i].pattern;
        const widen_tensor_info *t = widen_model_tensor_at(c, (size_t)k, NULL);
        const char *name = widen_model_tensor_name(c, (size_t)k);
        int axis = (int)(a->axis < 0 ? a->axis + t->rank : a->axis);
        if (axis < 0 || axis >= t->rank) {
            rc = fail(WIDEN_EUSAGE, "%s: tensor '%s'%s%s%s has rank %d: no axis %ld", a->input, name,
                      pattern ? " (matched by '" : "", pattern ? pattern : "", pattern ? "')" : "", t->rank, a->axis);
            break;
        }
        if (a->have_to && !a->map) {
            widen_map_entry *m = calloc(a->to ? a->to : 1, sizeof *m);
            if (!m) {
                rc = fail(WIDEN_EIO, "out of memory");
                break;
            }
            uint64_t ch = t->shape[axis];
            /* widen_widen_map refuses an init mode (timm, cyclic) with no channel to copy, a width below
             * the tensor's, or a position past it: the line names the flag that asked for it */
            if (ch > UINT32_MAX)
                rc = fail(WIDEN_EUSAGE, "tensor '%s' has too many channels", name);
            else if (widen_widen_map((uint32_t)ch, (uint32_t)a->to, (uint32_t)a->at, &init, m, &err))
                rc = fail(WIDEN_EUSAGE, "%s: tensor '%s': %s: %s%s", a->input, name,
                          init.kind != WIDEN_INIT_FILL ? "--init" : a->to < ch ? "--to" : "--at", err.message,
                          init.kind == WIDEN_INIT_FILL && a->to < ch ? " (--map narrows)" : "");
            else if (widen_transform_add_map(tr, name, (int)a->axis, m, a->to, &err))
                rc = fail_err(&err);
            free(m);
        } else if (widen_transform_add_map(tr, name, (int)a->axis, given, given_n, &err)) {
            rc = fail_err(&err);
        }
    }
    free(sel.items);
    free(given);
    return rc;
}

/* The output format apply would write: --format, else OUTPUT's extension, else the input's. */
static const char *output_format(const apply_args *a, const widen_model *c)
{
    if (a->format) return a->format;
    const char *dot = strrchr(a->output, '.');
    if (dot && strchr(dot, '/') == NULL) {
        if (strcasecmp(dot, ".safetensors") == 0) return "safetensors";
        if (strcasecmp(dot, ".pt") == 0 || strcasecmp(dot, ".pth") == 0 || strcasecmp(dot, ".bin") == 0) return "pt";
        if (strcasecmp(dot, ".npz") == 0) return "npz";
    }
    return widen_checkpoint_format(widen_model_file(c, 0));
}

/* --dry-run: each tensor that changes (old and new shape and dtype), the bytes written through the
 * kernels and the bytes copied untouched, the output and its format, on stdout. Writes nothing. */
static int print_plan(const apply_args *a, widen_model *c, const widen_transform *tr, int cast, widen_dtype cast_to)
{
    /* the library's dry run has made every check of the real run */
    int folder = widen_model_is_folder(c);
    int to_stdout = strcmp(a->output, "-") == 0;
    char *text = widen_transform_to_json(tr);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL, *by_name = json_object();
    free(text);
    if (!root || !by_name) {
        json_decref(root);
        json_decref(by_name);
        return fail(WIDEN_EIO, "out of memory");
    }
    json_t *edit;
    size_t k;
    json_array_foreach(json_object_get(root, "tensors"), k, edit)
        json_object_set(by_name, json_string_value(json_object_get(edit, "name")), edit);
    printf("plan: %s -> %s (%s%s), nothing written (--dry-run)\n", shown(a->input, 0),
           to_stdout ? stdout_name : shown(a->output, 1),
           folder ? "a model folder; weight files as " : "", folder && !a->format ? "the input's" : output_format(a, c));
    size_t n = widen_model_tensor_count(c), changed = 0;
    uint64_t written = 0, copied = 0;
    for (size_t i = 0; i < n; i++) {
        size_t f;
        const widen_tensor_info *t = widen_model_tensor_at(c, i, &f);
        const widen_checkpoint *ck = widen_model_file(c, f);
        const char *name = widen_model_tensor_name(c, i);
        widen_tensor_info out = *t;
        json_t *e = json_object_get(by_name, name);
        if (e) {
            int axis = (int)json_integer_value(json_object_get(e, "axis"));
            out.shape[axis < 0 ? axis + t->rank : axis] = json_array_size(json_object_get(e, "map"));
        }
        if (cast && widen_dtype_is_computable(t->dtype)) out.dtype = cast_to;
        if (!e && out.dtype == t->dtype) {
            copied += tensor_bytes(ck, (size_t)(t - widen_tensor_at(ck, 0)));
            continue;
        }
        uint64_t elements = 1;
        for (int d = 0; d < out.rank; d++) elements *= out.shape[d];
        written += elements * widen_dtype_bits(out.dtype) / 8;
        changed++;
        char from[512], to[512];
        shape_text(t, from, sizeof from);
        shape_text(&out, to, sizeof to);
        printf("  %s: %s %s -> %s %s\n", shown(name, 0), widen_dtype_name(t->dtype), from, widen_dtype_name(out.dtype), to);
    }
    char w[32], cp[32];
    human((double)written, w, sizeof w);
    human((double)copied, cp, sizeof cp);
    printf("tensors: %zu changed, %zu copied\n", changed, n - changed);
    printf("bytes: %llu to write (%s, transformed), %llu to copy (%s, untouched)\n", (unsigned long long)written, w,
           (unsigned long long)copied, cp);
    if (a->manifest) printf("manifest: %s\n", shown(a->manifest, 0));
    for (size_t i = 0; folder && !a->no_config && i < widen_model_channel_note_count(c); i++)
        printf("config: %s\n", shown(widen_model_channel_note(c, i), 0));
    json_decref(by_name);
    json_decref(root);
    return 0;
}

/* One line on success, for a person at a terminal. */
/* Tensors the transform changes: remapped, or cast to another dtype. */
static size_t changed_count(widen_model *c, const widen_transform *tr, int cast, widen_dtype cast_to)
{
    char *text = widen_transform_to_json(tr);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    size_t n = widen_model_tensor_count(c), changed = json_array_size(json_object_get(root, "tensors"));
    json_t *by_name = json_object(), *edit;
    size_t k;
    json_array_foreach(json_object_get(root, "tensors"), k, edit)
        json_object_set(by_name, json_string_value(json_object_get(edit, "name")), edit);
    for (size_t i = 0; cast && i < n; i++) {
        const widen_tensor_info *t = widen_model_tensor_at(c, i, NULL);
        if (widen_dtype_is_computable(t->dtype) && t->dtype != cast_to &&
            !json_object_get(by_name, widen_model_tensor_name(c, i)))
            changed++;
    }
    json_decref(by_name);
    json_decref(root);
    return changed;
}

/* One line on success, for a person at a terminal; or, with --json, one document on stdout. */
static int print_summary(const apply_args *a, widen_model *c, const widen_transform *tr, int cast, widen_dtype cast_to,
                         uint64_t total, double elapsed, const widen_apply_stats *stats)
{
    size_t n = widen_model_tensor_count(c), changed = changed_count(c, tr, cast, cast_to);
    if (a->json) {
        json_t *root = json_object(), *bytes = json_object();
        json_object_set_new(root, "output", json_string(a->output));
        json_object_set_new(root, "tensors_changed", json_integer((json_int_t)changed));
        json_object_set_new(root, "tensors_copied", json_integer((json_int_t)(n - changed)));
        json_object_set_new(bytes, "cloned", json_integer((json_int_t)stats->bytes_cloned));
        json_object_set_new(bytes, "copied", json_integer((json_int_t)stats->bytes_copied));
        json_object_set_new(bytes, "written", json_integer((json_int_t)stats->bytes_written));
        json_object_set_new(root, "bytes", bytes);
        json_object_set_new(root, "seconds", json_real(elapsed));
        return print_json(root);
    }
    if (!isatty(2)) return 0;
    struct stat st;
    int to_stdout = strcmp(a->output, "-") == 0;
    if (!to_stdout && stat(a->output, &st) == 0 && S_ISREG(st.st_mode)) total = (uint64_t)st.st_size;
    char bytes[32], cloned[32], copied[32], written[32];
    human((double)total, bytes, sizeof bytes);
    human((double)stats->bytes_cloned, cloned, sizeof cloned);
    human((double)stats->bytes_copied, copied, sizeof copied);
    human((double)stats->bytes_written, written, sizeof written);
    fprintf(stderr, "widen: wrote %s: %zu tensor%s changed, %zu copied, %s in %.1f s (%s cloned, %s copied, %s "
            "written)\n", to_stdout ? stdout_name : shown(a->output, 0), changed, changed == 1 ? "" : "s", n - changed,
            bytes, elapsed, cloned, copied, written);
    return 0;
}

/* -o -: what standard output cannot take, refused before anything is written (or planned). */
static int check_stdout(const apply_args *a, const widen_model *c)
{
    if (widen_model_is_folder(c))
        return fail(WIDEN_EUSAGE, "-o -: %s is a model folder, which goes to a new folder, not to standard output",
                    shown(a->input, 0));
    if (strcmp(output_format(a, c), "npz") == 0)
        return fail(WIDEN_EUSAGE, "-o -: an .npz cannot be streamed (each member's CRC goes back into its header "
                    "once written); pass --format safetensors or pt, or name a file");
    return 0;
}

static int cmd_apply(int argc, char **argv)
{
    double started = now();
    apply_args a = {0};
    int rc = parse_apply(argc, argv, &a);
    if (rc) {
        free(a.tensors);
        return rc < 0 ? 0 : rc;
    }
    widen_error err;
    widen_transform *tr = widen_transform_new();
    widen_model *c = NULL;
    int to_stdout = strcmp(a.output, "-") == 0;
    if (!tr) rc = fail(WIDEN_EIO, "out of memory");
    /* as zstd does: binary is never for a person to read */
    if (!rc && to_stdout && !a.dry_run && isatty(1)) rc = fail(WIDEN_EUSAGE, "refusing to write a checkpoint to a terminal");
    if (!rc && a.format && strcmp(a.format, "safetensors") != 0 && strcmp(a.format, "pt") != 0 &&
        strcmp(a.format, "npz") != 0)
        rc = fail(WIDEN_EUSAGE, "--format: '%s' is not safetensors, pt or npz", a.format);
    if (!rc && widen_isa_init(&err)) rc = fail_err(&err);
    widen_dtype to = WIDEN_F32;
    if (!rc && a.cast) {
        const char *names[] = {"f32", "f16", "bf16"};
        const widen_dtype dts[] = {WIDEN_F32, WIDEN_F16, WIDEN_BF16};
        int ok = 0;
        for (int i = 0; i < 3; i++)
            if (strcasecmp(a.cast, names[i]) == 0) to = dts[i], ok = 1;
        if (!ok) rc = fail(WIDEN_EUSAGE, "--cast: '%s' is not f32, f16 or bf16", a.cast);
        else if (widen_transform_set_cast(tr, to, &err)) rc = fail_flag("--cast", &err);
    }
    if (!rc && open_model(a.input, a.progress < 0 ? isatty(2) : a.progress, &c, &err)) rc = fail_err(&err);
    /* JAX/Flax kernels (HWIO) come as .npz: their input channels are axis -2 */
    if (!rc && !a.have_axis && !widen_model_is_folder(c) && strcmp(widen_checkpoint_format(widen_model_file(c, 0)), "npz") == 0)
        a.axis = -2;
    if (!rc && to_stdout) rc = check_stdout(&a, c);
    if (!rc && (a.have_to || a.map)) rc = build_maps(&a, c, tr);
    if (!rc) {
        widen_apply_options o;
        widen_apply_options_init(&o, sizeof o);
        struct stat out_st;
        int regular = !to_stdout || (fstat(1, &out_st) == 0 && S_ISREG(out_st.st_mode)); /* what fsync applies to */
        progress_state ps = {.show = !a.dry_run && (a.progress < 0 ? isatty(2) : a.progress),
                             .fsync = a.fsync && regular, .start = now()};
        o.threads = (unsigned)a.threads;
        o.fsync = a.fsync;
        o.overwrite = a.force;
        o.manifest_path = a.manifest;
        o.format = a.format;
        o.progress = on_progress;
        o.progress_user = &ps;
        o.warning = quiet ? NULL : on_warning;
        o.no_config = a.no_config;
        o.norm_fill = a.norm_fill;
        o.norm_fill_mean = a.norm_mean;
        o.norm_fill_std = a.norm_std;
        o.dry_run = a.dry_run; /* every check and notice of the real run, then the plan printed */
        widen_apply_stats stats;
        widen_apply_stats_init(&stats, sizeof stats);
        o.stats = &stats;
        if ((a.norm_fill || a.no_config) && !widen_model_is_folder(c) && !quiet)
            fprintf(stderr, "widen: warning: %s: --norm-fill and --no-config are for model folders; a file has no configs\n",
                    shown(a.input, 0));
        widen_status st;
        if (to_stdout) {
            signal(SIGPIPE, SIG_IGN); /* a reader gone: a write error (exit 4), temporaries removed */
            streaming = 1;
            st = widen_apply_to_fd(widen_model_file(c, 0), 1, stdout_name, tr, &o, &err);
            streaming = 0;
        } else {
            st = widen_model_apply(c, a.output, tr, &o, &err);
        }
        progress_end(&ps);
        if (st) rc = fail_err(&err);
        else if (a.dry_run) rc = print_plan(&a, c, tr, a.cast != NULL, to);
        else rc = print_summary(&a, c, tr, a.cast != NULL, to, ps.total, now() - started, &stats);
    }
    widen_model_close(c);
    widen_transform_free(tr);
    free(a.tensors);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* verify                                                                                           */

static int cmd_verify(int argc, char **argv)
{
    static const struct option opts[] = {{"manifest", required_argument, 0, 'm'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         READ_OPTIONS,
                                         {0, 0, 0, 0}};
    const char *manifest = NULL;
    int json = 0, o, rc;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'm') manifest = optarg;
        else if (o == 'j') json = 1;
        else if (o == 'h') return fputs(usage_verify, stdout), 0;
        else if ((rc = read_option(o, optarg, "verify"))) return rc;
    }
    if (argc - optind != 2) return fail(WIDEN_EUSAGE, "verify takes INPUT and OUTPUT (see widen verify --help)");
    const char *in = argv[optind], *out = argv[optind + 1];
    widen_verify_report r;
    widen_verify_report_init(&r, sizeof r);
    widen_verify_options vo;
    widen_verify_options_init(&vo, sizeof vo);
    progress_state ps = {.show = read_progress < 0 ? isatty(2) : read_progress, .start = now()};
    vo.manifest_path = manifest;
    vo.threads = read_threads;
    vo.progress = on_progress;
    vo.progress_user = &ps;
    widen_error err;
    widen_status st = widen_model_verify(in, out, &vo, &r, &err);
    progress_end(&ps);
    if (st != WIDEN_OK && st != WIDEN_DIFFERENT) return fail_err(&err);
    if (json) {
        json_t *root = json_object();
        json_object_set_new(root, "input", json_string(in));
        json_object_set_new(root, "output", json_string(out));
        json_object_set_new(root, "ok", json_boolean(st == WIDEN_OK));
        json_object_set_new(root, "tensors", json_integer((json_int_t)r.tensors));
        json_object_set_new(root, "transformed", json_integer((json_int_t)r.transformed));
        json_object_set_new(root, "differences", json_integer((json_int_t)r.differences));
        json_object_set_new(root, "first_difference", st == WIDEN_OK ? json_null() : json_string(r.first));
        print_json(root);
    } else if (st == WIDEN_OK) {
        printf("verified: %s is %s with the recorded transform: %zu tensors (%zu transformed, %zu identical)%s\n",
               shown(out, 0), shown(in, 1), r.tensors, r.transformed, r.tensors - r.transformed, manifest ? ", manifest hashes match" : "");
    }
    if (st == WIDEN_DIFFERENT) {
        if (r.differences > 1)
            return fail(WIDEN_DIFFERENT, "%s (and %zu more differences)", r.first, r.differences - 1);
        return fail(WIDEN_DIFFERENT, "%s", r.first);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

static int version(void)
{
    widen_error err;
    if (widen_isa_init(&err)) return fail_err(&err);
    printf("widen %s\n", WIDEN_VERSION_STRING);
    printf("isa: %s\n", widen_isa_name(widen_isa_active()));
    printf("usable:");
    for (int i = 0; i < WIDEN_ISA_COUNT; i++)
        if (widen_isa_usable((widen_isa)i)) printf(" %s", widen_isa_name((widen_isa)i));
    printf("\ncpu: %s\n", *widen_cpu_features() ? widen_cpu_features() : "(no SIMD features widen uses)");
    return 0;
}

int main(int argc, char **argv)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_bus_error;
    sigaction(SIGBUS, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN); /* past a file size limit, write() fails with EFBIG: exit 4, not a kill */
    if (argc < 2) {
        fputs(usage_main, stderr);
        return WIDEN_EUSAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0)
        return fputs(usage_main, stdout), 0;
    if (strcmp(cmd, "--version") == 0) return version();
    int rc;
    if (strcmp(cmd, "inspect") == 0) rc = cmd_inspect_or_hash(argc - 1, argv + 1, 0);
    else if (strcmp(cmd, "hash") == 0) rc = cmd_inspect_or_hash(argc - 1, argv + 1, 1);
    else if (strcmp(cmd, "apply") == 0) rc = cmd_apply(argc - 1, argv + 1);
    else if (strcmp(cmd, "verify") == 0) rc = cmd_verify(argc - 1, argv + 1);
    else rc = fail(WIDEN_EUSAGE, "unknown command '%s' (see widen --help)", cmd);
    if (fflush(stdout) != 0) return fail(WIDEN_EIO, "cannot write to standard output");
    return rc;
}
