/* widen.h: the public C API of widen, model surgery on checkpoint files.
 *
 * This header is the manual. Every function states its contract here.
 *
 * Conventions
 * - Every fallible function returns a widen_status and, when it is not WIDEN_OK, fills the caller's
 *   widen_error with the same status and a one-line message that names the file and, where it applies,
 *   the tensor. The library never prints and never exits. Messages name what an option is (the
 *   map, overwrite, a manifest), never a flag of the `widen` command: a program names its own options
 *   from the error's hint.
 * - Status values equal the exit codes of the `widen` command line (SPEC §2).
 * - Every function checks its pointer arguments: a NULL where one is needed is WIDEN_EUSAGE (never a
 *   crash); accessors given a NULL object answer 0, NULL or -1, and the free/close functions take NULL.
 *   `err` may always be NULL (then no message is kept).
 * - There is no global mutable state apart from the kernel table, which is chosen once per process
 *   (see widen_isa_init) and never changes afterwards.
 */
#ifndef WIDEN_WIDEN_H
#define WIDEN_WIDEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility: exactly the functions declared here are exported. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/* Versions: MAJOR.MINOR.PATCH. The shared library's SONAME is libwiden.so.MAJOR: a release that
 * breaks the ABI (a changed struct layout or signature, a removed function) bumps MAJOR; one that only
 * adds functions bumps MINOR; fixes bump PATCH. Before 1.0, MINOR plays MAJOR's part (SONAME
 * libwiden.so.0.MINOR is not promised: 0.x may break the ABI in any release, and says so). */
#define WIDEN_VERSION_MAJOR 0
#define WIDEN_VERSION_MINOR 1
#define WIDEN_VERSION_PATCH 0
#define WIDEN_VERSION_NUMBER (WIDEN_VERSION_MAJOR * 10000 + WIDEN_VERSION_MINOR * 100 + WIDEN_VERSION_PATCH)
#define WIDEN_VERSION_STRING "0.1.0"

/* WIDEN_VERSION_NUMBER of the library linked at run time (the header's may be older or newer). */
unsigned widen_version_number(void);

/* ---------------------------------------------------------------------------------------------- */
/* Status and errors                                                                                */

typedef enum widen_status {
    WIDEN_OK = 0,
    WIDEN_DIFFERENT = 1,       /* verification found a difference */
    WIDEN_EUSAGE = 2,          /* bad arguments: unknown or ambiguous tensor, impossible map, ... */
    WIDEN_EFORMAT = 3,         /* invalid or unsupported input file */
    WIDEN_EIO = 4,             /* read, write, disk full, out of memory */
    WIDEN_EINTERRUPTED = 130   /* the progress callback asked to stop */
} widen_status;

/* The caller's setting that would change an error's outcome, for a program to name in its own terms
 * (the `widen` command appends "use --force to replace it" to a WIDEN_HINT_OVERWRITE error). */
typedef enum widen_hint {
    WIDEN_HINT_NONE = 0,
    WIDEN_HINT_OVERWRITE = 1, /* the output or manifest exists: widen_apply_options.overwrite replaces it */
    WIDEN_HINT_FORMAT = 2,    /* widen does not write that output format: widen_apply_options.format */
    WIDEN_HINT_CAST = 3,      /* the output format cannot hold a dtype: a cast to F32 can */
    WIDEN_HINT_NO_CONFIG = 4, /* the configs cannot follow the transform: widen_apply_options.no_config */
    WIDEN_HINT_MANIFEST = 5   /* verify: the output records no transform; a manifest gives it */
} widen_hint;

/* The one struct of the API that does not grow (every function takes one; a size field would be one
 * more thing to forget): its layout changes only with the SONAME. */
typedef struct widen_error {
    widen_status status;
    char message[1024]; /* one line, no trailing newline, no "widen: error:" prefix */
    widen_hint hint;    /* WIDEN_HINT_NONE unless a setting of the caller's would change the outcome */
} widen_error;

/* Copies text into out (size bytes, always NUL-terminated when size > 0) with what must not reach a
 * terminal or a log line escaped: control characters (\n, \t, \x1b), bytes that are not UTF-8
 * (\xff), C1 controls, line separators and bidirectional overrides (\u202e). widen's own messages
 * escape the names they quote this way. Returns the length the whole escaped text needs. */
size_t widen_escape_text(const char *text, char *out, size_t size);

/* ---------------------------------------------------------------------------------------------- */
/* Element types (the safetensors names)                                                           */

typedef enum widen_dtype {
    WIDEN_BOOL, WIDEN_U8, WIDEN_I8, WIDEN_F8_E5M2, WIDEN_F8_E4M3, WIDEN_F8_E8M0, WIDEN_F8_E4M3FNUZ,
    WIDEN_F8_E5M2FNUZ, WIDEN_I16, WIDEN_U16, WIDEN_F16, WIDEN_BF16, WIDEN_I32, WIDEN_U32, WIDEN_F32,
    WIDEN_C64, WIDEN_F64, WIDEN_I64, WIDEN_U64, WIDEN_F4, WIDEN_F6_E2M3, WIDEN_F6_E3M2,
    WIDEN_DTYPE_COUNT
} widen_dtype;

/* "F32", "BF16", ... ; NULL for an out-of-range value. */
const char *widen_dtype_name(widen_dtype dtype);
/* Parses a safetensors dtype name (case-sensitive). Returns 0 on success, -1 if unknown. */
int widen_dtype_from_name(const char *name, widen_dtype *dtype);
/* Bits per element: 4, 6, 8, 16, 32, 64 or 128. */
unsigned widen_dtype_bits(widen_dtype dtype);
/* 1 for F32, F16 and BF16: the dtypes widen computes on (const fills, casts). */
int widen_dtype_is_computable(widen_dtype dtype);
/* 1 for every floating-point dtype (F8*, F16, BF16, F32, F64, F4, F6*). */
int widen_dtype_is_float(widen_dtype dtype);

/* ---------------------------------------------------------------------------------------------- */
/* Kernels and dispatch                                                                             */

typedef enum widen_isa {
    WIDEN_ISA_SCALAR, WIDEN_ISA_AVX2, WIDEN_ISA_AVX512, WIDEN_ISA_NEON, WIDEN_ISA_COUNT
} widen_isa;

/* "scalar", "avx2", "avx512", "neon". */
const char *widen_isa_name(widen_isa isa);
/* 1 if this build has kernels for `isa` and this CPU (and OS) can run them. */
int widen_isa_usable(widen_isa isa);
/* Space-separated list of the relevant features this CPU offers, e.g. "avx2 f16c fma avx512f". */
const char *widen_cpu_features(void);

/* Chooses the kernel table once per process: WIDEN_ISA from the environment if set (scalar, avx2,
 * avx512, neon), else the best usable ISA. Returns WIDEN_EUSAGE if WIDEN_ISA names an unknown ISA or
 * one this CPU or build cannot run. Safe to call many times and from many threads; every entry point
 * that runs kernels calls it. */
widen_status widen_isa_init(widen_error *err);
/* The ISA in use (calls widen_isa_init; scalar if that failed). */
widen_isa widen_isa_active(void);

/* One output channel of a channel map. */
/* Arithmetic is done in fp32 and rounded once to the output dtype; the kinds past WIDEN_MAP_ZERO
 * need an F32, F16 or BF16 tensor. */
typedef enum widen_map_kind {
    WIDEN_MAP_SOURCE, /* copy input channel `channel` */
    WIDEN_MAP_ZERO,   /* all-zero bytes (+0.0 for floats, 0 for integers, false for BOOL) */
    WIDEN_MAP_CONST,  /* `value` */
    WIDEN_MAP_SCALE,  /* input channel `channel` times `value` */
    WIDEN_MAP_MEAN,   /* the input channels summed in order, divided by their count */
    WIDEN_MAP_SUM,    /* the input channels summed in order */
    WIDEN_MAP_NORMAL  /* Gaussian noise of standard deviation `value`, a function of (seed, element index) */
} widen_map_kind;

typedef struct widen_map_entry {
    widen_map_kind kind;
    uint32_t channel; /* SOURCE, SCALE: input channel index */
    float value;      /* CONST: the fill; SCALE: the factor; NORMAL: the standard deviation */
    uint64_t seed;    /* NORMAL */
} widen_map_entry;

/* A remap job: for r < rows, n < channels, i < inner:
 *   dst[r*dst_row_stride + n*dst_chan_stride + i] = source of map[n] at (r, i)
 * where the source of a WIDEN_MAP_SOURCE entry is src[r*src_row_stride + map[n].channel*src_chan_stride
 * + i], converted from src_dtype to dst_dtype. Strides count elements; every row of the source is
 * readable up to the last element the map reads from it. src_dtype == dst_dtype moves raw
 * elements of 1, 2, 4 or 8 bytes; different dtypes must both be F32, F16 or BF16 (round to nearest
 * even; NaN stays NaN, quieted). Pointers need no alignment. The kernel writes exactly the
 * rows x channels x inner destination elements and nothing else. */
typedef enum widen_store {
    WIDEN_STORE_AUTO,   /* streaming stores for outputs of widen_stream_threshold() bytes or more */
    WIDEN_STORE_CACHED, /* ordinary stores: the output is read again soon */
    WIDEN_STORE_STREAM  /* non-temporal stores where the ISA has them */
} widen_store;

/* Output size from which WIDEN_STORE_AUTO streams past the cache: 32 MiB, or the last-level
 * cache's size where the OS reports a smaller one. */
size_t widen_stream_threshold(void);

typedef struct widen_remap_job {
    const void *src;
    void *dst;
    widen_dtype src_dtype, dst_dtype;
    size_t rows, channels, inner;
    size_t src_row_stride, src_chan_stride;
    size_t dst_row_stride, dst_chan_stride;
    const widen_map_entry *map; /* `channels` entries */
    widen_store store;          /* a hint: the bytes written do not depend on it */
    size_t src_channels;        /* input channels per row: what MEAN and SUM read (0: MEAN/SUM unused) */
    uint64_t index;             /* flat output index of the job's first element (row 0, channel 0,
                                   element 0), for NORMAL: element (r, n, i) has index
                                   index + r*dst_row_stride + n*dst_chan_stride + i */
} widen_remap_job;

/* Runs a remap job with the kernels of `isa` (WIDEN_ISA_COUNT: the active ISA). Returns WIDEN_EUSAGE
 * for an unsupported dtype pair, a const fill on a non-computable dtype, or an unusable ISA. */
widen_status widen_remap(const widen_remap_job *job, widen_isa isa, widen_error *err);

/* Converts n elements between F32, F16 and BF16 (round to nearest even, NaN quieted), or copies them
 * when from == to. Same rules as widen_remap. */
widen_status widen_cast(widen_dtype from, widen_dtype to, const void *src, void *dst, size_t n,
                        widen_isa isa, widen_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Hashing: XXH3-128, printed as xxhsum -H2 and Python's xxhash.xxh3_128_hexdigest print it.        */

typedef struct widen_hash128 {
    uint64_t high, low;
} widen_hash128;

/* Writes 32 lowercase hex digits and a NUL (canonical big-endian form). */
void widen_hash128_hex(widen_hash128 hash, char out[33]);
/* XXH3-128 of a buffer. */
widen_hash128 widen_hash_bytes(const void *data, size_t len);

/* ---------------------------------------------------------------------------------------------- */
/* Checkpoints                                                                                      */

typedef struct widen_checkpoint widen_checkpoint;

#define WIDEN_MAX_RANK 16

typedef struct widen_tensor_info {
    const char *name;
    widen_dtype dtype;
    int rank;
    uint64_t shape[WIDEN_MAX_RANK];
    uint64_t offset; /* absolute byte offset of the data in the file */
    uint64_t nbytes;
} widen_tensor_info;

/* Opens a checkpoint read-only and validates its header (every rule of FORMATS.md). Returns
 * WIDEN_EFORMAT for invalid or unsupported files (the message says what the file is), WIDEN_EIO when
 * it cannot be read. The file is never modified. */
widen_status widen_open(const char *path, widen_checkpoint **out, widen_error *err);
void widen_close(widen_checkpoint *ckpt);

const char *widen_checkpoint_path(const widen_checkpoint *ckpt);
const char *widen_checkpoint_format(const widen_checkpoint *ckpt); /* "safetensors" */
uint64_t widen_checkpoint_size(const widen_checkpoint *ckpt);      /* file size in bytes */
/* Tensors in file order (increasing offset). */
size_t widen_tensor_count(const widen_checkpoint *ckpt);
const widen_tensor_info *widen_tensor_at(const widen_checkpoint *ckpt, size_t index);
/* Index of the tensor called `name`, or -1. */
long widen_tensor_find(const widen_checkpoint *ckpt, const char *name);
/* For a PyTorch checkpoint: the key of the storage tensor `index` views (tensors that share a
 * storage are views or tied weights), and whether it is stored with non-contiguous strides (its
 * bytes are not one run: nbytes is then 0, and its hash is of its elements in row-major order, the
 * bytes it would have if contiguous). NULL / 0 for safetensors. */
const char *widen_tensor_storage(const widen_checkpoint *ckpt, size_t index);
int widen_tensor_strided(const widen_checkpoint *ckpt, size_t index);

/* String metadata (safetensors __metadata__), in file order. */
size_t widen_metadata_count(const widen_checkpoint *ckpt);
void widen_metadata_at(const widen_checkpoint *ckpt, size_t index, const char **key, const char **value);

/* Progress: `done` of `total` bytes of work, reported at least every 64 MiB of data moved, read or
 * compared; `total` is fixed for the run and `done` never decreases and ends at `total`. Nonzero stops
 * the run (WIDEN_EINTERRUPTED) before it moves another 64 MiB. It may be called from one of the
 * library's worker threads, never from two at once, and never after the call that started the run has
 * returned. */
typedef int (*widen_progress_fn)(void *user, uint64_t done, uint64_t total);

/* Structs that can grow (options, reports). Each begins with `size`: its size in the header the caller
 * was built with, which the caller passes to the matching *_init function (`widen_apply_options_init(
 * &o, sizeof o)`): that fills the defaults, zeroes what this library does not know, sets `size`, and
 * writes no byte past it. The library reads (and, for a report, writes) only that many bytes: fields
 * a newer library added keep their defaults for an older caller. It refuses with WIDEN_EUSAGE a size
 * smaller than the first published layout, or a larger one whose bytes past what this library knows
 * are not all zero (a newer caller asking for something this library cannot do). Always call the
 * *_init function, then set fields by name. */

typedef struct widen_hash_options {
    size_t size;
    unsigned threads; /* 0: online CPUs. The hashes do not depend on it. */
    widen_progress_fn progress;
    void *progress_user;
} widen_hash_options;

/* Fills options with the defaults: all CPUs, no progress. */
void widen_hash_options_init(widen_hash_options *options, size_t size);

typedef struct widen_open_options {
    size_t size;
    widen_progress_fn progress;
    void *progress_user;
} widen_open_options;

/* Fills options with the defaults: no progress. */
void widen_open_options_init(widen_open_options *options, size_t size);

/* widen_open, with progress (options may be NULL: widen_open). Most files are opened from their
 * headers alone, and progress is then never called. An .npz reads its members' data at open: each
 * stored member whole, for its CRC-32, and each deflated member (np.savez_compressed) inflated into
 * the temporary file. Progress counts those bytes as they are read or inflated: the total is the
 * stored members' sizes plus the deflated members' inflated sizes (as the zip directory declares
 * them: the bytes inflated, not the compressed bytes read), plus, in an archive with deflated arrays,
 * the stored arrays' bytes again, copied next to them. It is called every 8 MiB of that and at its
 * end. Nonzero stops the open: WIDEN_EINTERRUPTED, *out NULL, the temporary file gone (it never had a
 * name). */
widen_status widen_open_with(const char *path, const widen_open_options *options, widen_checkpoint **out,
                             widen_error *err);

/* Hashes the whole file and each tensor's bytes (a strided tensor's elements in row-major order).
 * tensor_hashes has widen_tensor_count entries (or is NULL); options may be NULL (the defaults).
 * Progress counts the file's bytes and then, for a checkpoint whose tensors are not simply the file's
 * runs in order (PyTorch, NumPy), the tensors' bytes. */
widen_status widen_hash_checkpoint(widen_checkpoint *ckpt, widen_hash128 *file_hash,
                                   widen_hash128 *tensor_hashes, const widen_hash_options *options,
                                   widen_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Transforms                                                                                       */

typedef struct widen_transform widen_transform;

widen_transform *widen_transform_new(void);
void widen_transform_free(widen_transform *transform);

/* Parses "--map" syntax: comma-separated entries K (input channel), K*S (scaled), zero, const:V,
 * mean, sum, normal:STD[:SEED]. On success *entries is malloc'ed (free it) and holds *count entries. */
widen_status widen_parse_map(const char *list, widen_map_entry **entries, size_t *count,
                             widen_error *err);
/* An --init mode: a fill for the new channels, or a rule for the whole tensor. */
typedef enum widen_init_kind {
    WIDEN_INIT_FILL,   /* new channels get `fill` (zeros, const:V, mean, copy:K, normal:STD[:SEED]) */
    WIDEN_INIT_TIMM,   /* out channel i = in channel (i mod C) * C/N; N = 1: the sum (timm's adapt_input_conv) */
    WIDEN_INIT_CYCLIC  /* out channel i = in channel (i mod C) */
} widen_init_kind;

typedef struct widen_init {
    widen_init_kind kind;
    widen_map_entry fill;
} widen_init;

/* Parses an --init mode: zeros, const:V, mean, copy:K, normal:STD[:SEED], timm, cyclic. */
widen_status widen_parse_init(const char *mode, widen_init *init, widen_error *err);
/* Builds the map of "--to n --at at --init init" for a tensor with c channels. FILL: entries
 * at..at+c-1 copy channels 0..c-1, the others get the fill (WIDEN_EUSAGE if n < c or at > n - c);
 * TIMM and CYCLIC map every output channel and ignore `at`. entries must hold n. */
widen_status widen_widen_map(uint32_t c, uint32_t n, uint32_t at, const widen_init *init,
                             widen_map_entry *entries, widen_error *err);

/* Adds a remap of tensor `name` along `axis` (negative counts from the end). The map is copied. */
widen_status widen_transform_add_map(widen_transform *transform, const char *name, int axis,
                                     const widen_map_entry *map, size_t count, widen_error *err);
/* Casts every F32/F16/BF16 tensor of the file to `to` (F32, F16 or BF16). */
widen_status widen_transform_set_cast(widen_transform *transform, widen_dtype to, widen_error *err);

/* The transform as compact JSON (malloc'ed; free it): the form stored under the `widen` key of a
 * safetensors output's __metadata__ and in manifests. */
char *widen_transform_to_json(const widen_transform *transform);
widen_status widen_transform_from_json(const char *json, widen_transform **out, widen_error *err);

/* Auto-detection: indices of floating-point tensors of rank >= 3 whose size along `axis` is `from`.
 * Writes up to `max` indices and returns how many there are in all. */
size_t widen_find_candidates(const widen_checkpoint *ckpt, int axis, uint64_t from, size_t *indices,
                             size_t max);

/* ---------------------------------------------------------------------------------------------- */
/* Apply and verify                                                                                 */

/* What an apply did with the output's bytes (a growable struct: widen_apply_stats_init(&s, sizeof s)). */
typedef struct widen_apply_stats {
    size_t size;
    uint64_t bytes_cloned;  /* shared with the input's blocks (reflink: XFS, btrfs, OpenZFS, NFS 4.2):
                               no data moved, no space used */
    uint64_t bytes_copied;  /* copied inside the kernel (copy_file_range) */
    uint64_t bytes_written; /* written from the library's buffers: transformed tensors, headers, the
                               untouched bytes of runs too short to copy, documents of a folder */
} widen_apply_stats;

void widen_apply_stats_init(widen_apply_stats *stats, size_t size);

typedef struct widen_apply_options {
    size_t size;               /* sizeof(widen_apply_options), as widen_apply_options_init sets it */
    unsigned threads;          /* 0: online CPUs. The output's bytes and hashes do not depend on it. */
    int fsync;                 /* fsync the output before the rename (recommended) */
    int overwrite;             /* replace an existing output (never the input) */
    const char *manifest_path; /* NULL: no manifest */
    const char *format;        /* "safetensors", "pt" or "npz"; NULL: from the output's extension (.pt,
                                  .pth, .bin: pt; .safetensors: safetensors; .npz: npz), else the input's */
    widen_progress_fn progress;
    void *progress_user;
    /* one-line notices (values a conversion drops, storages it unshares); NULL: none */
    void (*warning)(void *user, const char *message);
    void *warning_user;
    /* model folders: configs that declare the input layer's channels and per-channel normalisation
     * follow the widened input layer unless no_config; new channels' normalisation values are
     * norm_fill_mean / norm_fill_std when norm_fill is set, else the mean of the old channels' */
    int no_config;
    int norm_fill;
    double norm_fill_mean, norm_fill_std;
    /* Added after the first layout. Every check and every notice of a real run, then nothing written
     * and nothing created: WIDEN_OK when the run would start writing (the output's folder, or a model
     * folder's parent, exists and takes files). What is left to go wrong is I/O: a full disk, a file
     * changed under it. */
    int dry_run;
    /* Added after the first layout. Filled when the apply succeeds (NULL: not kept). */
    widen_apply_stats *stats;
} widen_apply_options;

/* Fills options with the defaults: all CPUs, fsync on, no overwrite, no manifest, no progress. */
void widen_apply_options_init(widen_apply_options *options, size_t size);

/* Writes `output_path` (safetensors or a torch.save zip checkpoint) = the input with `transform`
 * applied; with an empty transform, only a conversion to the other format. The input is read-only;
 * the output goes to a temporary file in the output's folder and is renamed into place only when
 * complete, so after any failure no output exists (and a pre-existing one is untouched). Where
 * opening the input reads data (an .npz's deflated members), options->progress sees that first, as
 * a run of its own (widen_open_with), then the apply's run. */
widen_status widen_apply(const char *input_path, const char *output_path,
                         const widen_transform *transform, const widen_apply_options *options,
                         widen_error *err);

/* widen_apply on a checkpoint already open (with widen_open; its path is the input): for a program
 * that looked at the tensors first, to choose them. The checkpoint stays open and unchanged; close
 * it after. */
widen_status widen_apply_checkpoint(widen_checkpoint *input, const char *output_path,
                                    const widen_transform *transform, const widen_apply_options *options,
                                    widen_error *err);

/* widen_apply_checkpoint into an open descriptor, front to back, for a pipeline that streams the
 * output on (`widen apply IN -o -`): a pipe, a socket, or a regular file at its current offset (its
 * bytes then follow the offset; nothing before it is touched). No temporary file and no rename: the
 * bytes leave as they are made, the same bytes widen_apply_checkpoint would write to a file.
 * - `name` is what messages and the manifest call the output (NULL: "<output stream>").
 * - The format is options->format, "safetensors" or "pt" (NULL: the input's format); "npz" is
 *   WIDEN_EUSAGE, as an .npz goes back to write each member's CRC into its header.
 * - Every check widen_apply_checkpoint makes (targets, format, tensors, transform, the manifest's
 *   folder) is made before the first byte is written; WIDEN_EUSAGE also for a descriptor that is
 *   not open for writing, a folder, a terminal, or the input file itself.
 * - A failure once writing has begun (a write error, a reader that closed the pipe, the progress
 *   callback asking to stop) returns its status with a message that ends "the output stream is
 *   incomplete": the reader must discard what it got. A pipe whose reader has gone raises SIGPIPE,
 *   which ends the process unless the program ignores or handles it (then: WIDEN_EIO).
 * - options->fsync fsyncs the descriptor at the end where it is a regular file; overwrite applies
 *   to the manifest only. The manifest (options->manifest_path) is written as widen_apply writes
 *   it (a temporary renamed into place), once the output's last byte is written; if that fails, the
 *   stream was complete and the message names the manifest.
 * The descriptor stays open (the caller closes it); the checkpoint stays open and unchanged. */
widen_status widen_apply_to_fd(widen_checkpoint *input, int fd, const char *name, const widen_transform *transform,
                               const widen_apply_options *options, widen_error *err);

/* For a program's handler of fatal signals (SIGBUS when a file shrinks under its mapping): removes
 * the temporary files of every widen_apply in progress, so that no partial output is left behind.
 * Async-signal-safe; the process is expected to exit right after. */
void widen_remove_temporaries(void);

typedef struct widen_verify_options {
    size_t size;               /* sizeof(widen_verify_options), as widen_verify_options_init sets it */
    const char *manifest_path; /* NULL: the transform the output records */
    unsigned threads;          /* 0: online CPUs. The verdict does not depend on it. */
    widen_progress_fn progress;
    void *progress_user;
} widen_verify_options;

/* Fills options with the defaults: no manifest, all CPUs, no progress. */
void widen_verify_options_init(widen_verify_options *options, size_t size);

typedef struct widen_verify_report {
    size_t size;         /* sizeof(widen_verify_report): set by widen_verify_report_init; the library
                            fills only that many bytes */
    size_t tensors;      /* tensors compared */
    size_t transformed;  /* of which remapped or cast */
    size_t differences;  /* tensors (or metadata entries) that differ */
    char first[1024];    /* the first difference, one line */
} widen_verify_report;

/* Zeroes a report (`size` bytes) and sets its size: call it before widen_verify or widen_model_verify. */
void widen_verify_report_init(widen_verify_report *report, size_t size);

/* Proves that `output_path` is `input_path` with the recorded transform applied: the transform
 * comes from the manifest if options->manifest_path is not NULL (whose hashes are then checked too),
 * else from the output's `widen` metadata key (options may be NULL: the defaults). Untouched tensors must be byte-identical (or equal after
 * the recorded cast); every transformed output channel must equal its source channel bit for bit,
 * and every filled channel hold exactly the fill (checked with the scalar reference kernels).
 * Returns WIDEN_OK or WIDEN_DIFFERENT (report filled in either case), or an error status.
 * Progress counts, in one run, what opening the two files reads (an .npz's members, as
 * widen_open_with counts them), the bytes replayed, then the bytes read back. */
widen_status widen_verify(const char *input_path, const char *output_path, const widen_verify_options *options,
                          widen_verify_report *report, widen_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Models: one checkpoint file, or a model folder                                                  */

/* A model is what a command takes: a checkpoint file; a model folder (shards with their
 * `*.index.json`, single-file weights, diffusers component folders, timm Hub folders, with their
 * configs and other files); or an `*.index.json`. Tensor names are the model's: a shard's names as
 * they are, prefixed with "component/" in a component folder ("unet/conv_in.weight"). */
typedef struct widen_model widen_model;

/* Opens a model read-only. WIDEN_EFORMAT for a folder whose index and shards disagree, a shard that
 * is missing or invalid, a malformed index or config; WIDEN_EUSAGE for a folder that holds no weights
 * or holds the same names in two files (the message names them). */
widen_status widen_model_open(const char *path, widen_model **out, widen_error *err);
/* widen_model_open with widen_open_with's progress (options may be NULL). A file: as widen_open_with.
 * A folder: one run over its weight files' opens, whose total is the bytes of every file of the folder
 * (widen_model_size); each weight file's open advances it by that file's size, in proportion to its own
 * progress. It is called only where an open reads data (an .npz's members), and then ends at the
 * total. */
widen_status widen_model_open_with(const char *path, const widen_open_options *options, widen_model **out,
                                   widen_error *err);
void widen_model_close(widen_model *model);

/* 1 for a model folder (or an index), 0 for a single checkpoint file. */
int widen_model_is_folder(const widen_model *model);
/* The weight files, each an open checkpoint, and their paths relative to the model's folder (a
 * single file's path as given). */
size_t widen_model_file_count(const widen_model *model);
widen_checkpoint *widen_model_file(const widen_model *model, size_t index);
const char *widen_model_file_name(const widen_model *model, size_t index);
/* Bytes of every file of a folder model (weights, index, configs, the rest). */
uint64_t widen_model_size(const widen_model *model);

/* The model's tensors: every file's, in file order. */
size_t widen_model_tensor_count(const widen_model *model);
const char *widen_model_tensor_name(const widen_model *model, size_t index);
/* The tensor as its file describes it (offsets within that file), with the file's index. */
const widen_tensor_info *widen_model_tensor_at(const widen_model *model, size_t index, size_t *file);
long widen_model_tensor_find(const widen_model *model, const char *name);

/* Auto-detection over a model: the tensor a timm config names as its first layer
 * (`pretrained_cfg.first_conv` + ".weight") when its size along `axis` is `from`; else the
 * floating-point tensors of rank >= 3 whose size along `axis` is `from`, narrowed, when there are
 * several, to those of components whose config declares `from` input channels. Writes up to `max`
 * model tensor indices and returns how many there are in all. */
size_t widen_model_find_candidates(const widen_model *model, int axis, uint64_t from, size_t *indices, size_t max);

/* Weight files of a folder that its model is not made of (variants, other formats, another index):
 * an apply leaves them out of its output. */
size_t widen_model_left_out_count(const widen_model *model);
const char *widen_model_left_out(const widen_model *model, size_t index);

/* What the configs of a folder say about input channels, one line each ("config.json: num_channels
 * = 3"). */
size_t widen_model_channel_note_count(const widen_model *model);
const char *widen_model_channel_note(const widen_model *model, size_t index);

/* widen_apply for a model: a file as widen_apply_checkpoint; a folder into the folder
 * `output_path`, which must not exist: shards holding a transformed tensor rewritten, the others
 * copied (copy_file_range: cloned where the file system can), the index and the configs edited
 * (see README, "Model folders"), every other file copied unchanged; built beside the target and
 * renamed into place only when complete. */
widen_status widen_model_apply(widen_model *model, const char *output_path, const widen_transform *transform,
                               const widen_apply_options *options, widen_error *err);

/* widen_verify for models: two files, or two folders (every shard, the index, every config change,
 * every other file byte-identical, no file extra or missing). The transform comes from the manifest,
 * or from the `widen` keys of the output's safetensors files. */
widen_status widen_model_verify(const char *input_path, const char *output_path,
                                const widen_verify_options *options, widen_verify_report *report, widen_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Reading tensors                                                                                  */

/* The bytes of tensor `index` where the file holds them as its elements in row-major little-endian
 * order (a safetensors tensor; a contiguous torch tensor; a C-order little-endian NumPy array):
 * *data points into the checkpoint's read-only mapping, valid until widen_close, and *nbytes is its
 * byte count (*data may be any non-NULL pointer when it is 0). WIDEN_EUSAGE (with *data NULL) for an
 * index out of range, a NULL argument, or a tensor that is not one such run of bytes (a strided torch
 * view, a Fortran-order or big-endian NumPy array: widen_tensor_strided says which): read those with
 * widen_tensor_read. */
widen_status widen_tensor_data(const widen_checkpoint *ckpt, size_t index, const void **data, uint64_t *nbytes,
                               widen_error *err);

/* Copies tensor `index`'s elements into out in row-major order, little-endian: the bytes it would
 * have if contiguous (gathered for a strided view, byte-swapped for a big-endian array; the bytes its
 * hash is of). `size` must be exactly that many bytes (widen_tensor_info.nbytes, or elements times
 * element size for a strided tensor), else WIDEN_EUSAGE, as for an index out of range or a NULL
 * argument (out may be NULL when size is 0). The pages read are released from the process after. */
widen_status widen_tensor_read(const widen_checkpoint *ckpt, size_t index, void *out, uint64_t size,
                               widen_error *err);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif
