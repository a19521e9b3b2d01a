/* internal.h: what the library's parts share and the public header does not promise. */
#ifndef WIDEN_INTERNAL_H
#define WIDEN_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>

#include "error.h"
#include "io.h"
#include "table.h"
#include "widen/widen.h"

/* Metadata key under which apply records the transform in a safetensors output. */
#define WIDEN_PROVENANCE_KEY "widen"

typedef struct widen_metadata_entry {
    char *key, *value;
} widen_metadata_entry;

/* A tensor of a reader other than torch's whose bytes are not its values in row-major little-endian
 * order (a NumPy array in Fortran order, or big-endian): its elements lie at these strides (in
 * elements) from its offset, each to be byte-swapped in units of `swap` bytes (0: as they are). */
typedef struct widen_layout {
    uint64_t strides[WIDEN_MAX_RANK];
    uint8_t gathered; /* 0: a plain tensor */
    uint8_t swap;
    uint8_t row_major; /* the strides are C order's: a run of elements is a run of bytes */
} widen_layout;

struct widen_checkpoint {
    char *path;
    int fd;
    uint64_t size;
    const unsigned char *map; /* the whole file, read-only; pages are released as they are used */
    const char *format;
    widen_tensor_info *tensors; /* file order */
    char **names;               /* owned storage behind tensors[i].name (NULL: they lie in pool) */
    char *pool;                 /* a reader's decoded strings (safetensors: names, metadata) */
    size_t count;
    widen_metadata_entry *metadata;
    size_t metadata_count;
    void *format_state; /* what a format reader keeps (torch: the archive and the object graph) */
    void (*format_free)(void *state);
    widen_layout *layouts;  /* per tensor, or NULL (torch's strides live in its format state) */
    widen_table by_name;    /* tensor name -> index */
    uint64_t logical_bytes; /* the element bytes of every named tensor (views and tied names each count) */
    /* An .npz with deflated members: map, fd and size above are then an unlinked temporary file holding
     * its inflated arrays (where the tensors' offsets point, what the data path reads and copies), and
     * `file` is the input itself, still open and mapped, for what is the file's own (size, hash). */
    int inflated;
    widen_mapping file;
    /* The work an open does reading data (an .npz's inflating and CRC checks: its progress total), and
     * of it what a deferred open left to widen_checkpoint_load (0: none; the tensors' offsets are then
     * not yet where their bytes are, and only the tensor list may be used). */
    uint64_t open_work, pending_work;
    void *pending; /* the reader's state for that (format_state is the format's own) */
    void (*pending_free)(void *pending);
};

/* How a checkpoint is opened: the progress of what opening reads (an .npz's deflated members
 * inflated, its stored members' CRC-32 checked; NULL: none), and `defer`: that reading waits for
 * widen_checkpoint_load (verify first learns its run's total from the tensor lists). */
typedef struct widen_open_work {
    widen_progress_fn progress;
    void *progress_user;
    int defer;
} widen_open_work;

/* Progress reports of a reader's open: every WIDEN_OPEN_STEP bytes of its work, and at its end. */
#define WIDEN_OPEN_STEP (8ull << 20)

/* The first published widen_open_options ends with progress_user. */
#define WIDEN_OPEN_OPTIONS_V1 (offsetof(widen_open_options, progress_user) + sizeof(void *))

/* widen_open with `work` (NULL: no progress, nothing deferred). */
widen_status widen_open_ex(const char *path, const widen_open_work *work, widen_checkpoint **out, widen_error *err);
/* Does what a deferred open left (nothing where it left nothing), with its progress: done of
 * ckpt->pending_work. Nonzero from progress: WIDEN_EINTERRUPTED; after a failure, only widen_close. */
widen_status widen_checkpoint_load(widen_checkpoint *ckpt, widen_progress_fn progress, void *progress_user,
                                   widen_error *err);

/* The input file as opened: `file` where the tensors were inflated elsewhere, else the mapping. */
static inline widen_mapping widen_checkpoint_file(const widen_checkpoint *ckpt)
{
    if (ckpt->inflated) return ckpt->file;
    widen_mapping m = {ckpt->map, ckpt->size, ckpt->fd};
    return m;
}

/* The work a checkpoint describes (what converting or hashing every name reads) may be at most this
 * many times its size, plus WIDEN_WORK_SLACK: more is a file crafted to describe huge work from few
 * bytes (one zero-stride view under many names), refused with exit 3. */
#define WIDEN_WORK_FACTOR 256u
#define WIDEN_WORK_SLACK (64ull << 20)
widen_status widen_checkpoint_check_work(const widen_checkpoint *ckpt, widen_error *err);
/* That bound for a file of `file_size` bytes (saturating). */
uint64_t widen_work_limit(uint64_t file_size);
/* 0 where a .pt rewrite cannot cast tensor `index` (its storage is shared with a value widen does
 * not model, or its dtype is an argument of _rebuild_tensor_v3): --cast then leaves it as it is. */
int widen_tensor_castable(const widen_checkpoint *ckpt, size_t index);

/* Format readers: fill ckpt->tensors and ckpt->metadata from the mapped file. */
widen_status widen_safetensors_read(widen_checkpoint *ckpt, widen_error *err);
widen_status widen_torch_read(widen_checkpoint *ckpt, widen_error *err);

/* Notices for converting a torch checkpoint to `to` ("safetensors", "an .npz archive"): the
 * non-tensor values it drops and the tensors that shared a storage (each gets its own copy). */
void widen_torch_conversion_notes(const widen_checkpoint *ckpt, const char *to,
                                  void (*warning)(void *user, const char *message), void *user);
/* Notices for a .pt rewrite: archive entries torch.load does not read (not written), storages a
 * cast leaves as they are. */
struct widen_transform;
void widen_torch_notes(const widen_checkpoint *ckpt, const struct widen_transform *transform,
                       void (*warning)(void *user, const char *message), void *user);

/* Strided torch tensors, read in row-major order: the bytes they would have if contiguous, which is
 * what they are hashed as and written to safetensors as. */
uint64_t widen_tensor_elements(const widen_checkpoint *ckpt, size_t index);
/* Bytes of the storage from the tensor's first element to its last, which a gather reads. */
uint64_t widen_tensor_span(const widen_checkpoint *ckpt, size_t index);
/* WIDEN_EFORMAT for a view whose zero strides claim more than 256 times the file's size. */
widen_status widen_tensor_check_strided(const widen_checkpoint *ckpt, size_t index, widen_error *err);
/* Elements [first, first+count) in row-major order into out (count × element size bytes). */
void widen_tensor_gather(const widen_checkpoint *ckpt, size_t index, uint64_t first, uint64_t count, void *out);
widen_status widen_tensor_hash_strided(const widen_checkpoint *ckpt, size_t index, widen_hash128 *out,
                                       widen_progress_fn progress, void *progress_user, widen_error *err);
/* The XXH3-128 of tensor `index`'s elements in row-major order, as its reader gives them (gathered
 * where strided), releasing its pages as it goes. progress (or NULL) gets the bytes hashed of the
 * tensor's, every 8 MiB; nonzero from it stops: WIDEN_EINTERRUPTED. */
widen_status widen_tensor_hash(const widen_checkpoint *ckpt, size_t index, widen_hash128 *out, widen_progress_fn progress,
                               void *progress_user, widen_error *err);

/* One tensor of an output, in output order. */
typedef enum widen_plan_op {
    WIDEN_OP_COPY, /* output bytes = input bytes */
    WIDEN_OP_REMAP /* channel map and/or cast through the kernels */
} widen_plan_op;

typedef struct widen_plan_tensor {
    const widen_tensor_info *in;
    const char *name;
    widen_plan_op op;
    widen_dtype dtype; /* output dtype */
    int rank;
    uint64_t shape[WIDEN_MAX_RANK];
    uint64_t nbytes; /* output bytes */
    int strided;     /* a torch tensor with non-contiguous strides: the executor gathers its elements */
    /* WIDEN_OP_REMAP: the input seen as [outer, in_channels, inner], output [outer, channels, inner] */
    uint64_t outer, inner;
    uint64_t in_channels, channels;
    int axis; /* normalised, -1 for a cast-only tensor */
    const widen_map_entry *map; /* NULL for a cast-only tensor (identity over one channel) */
    widen_hash128 in_hash, out_hash; /* filled by widen_execute */
    int hashed;                      /* in_hash and out_hash are filled */
    /* a .pt record copied whole from the input's record: its CRC-32 is the input's (as the input's
     * zip directory gives it), not read again */
    int crc_known;
    uint32_t crc;
} widen_plan_tensor;

typedef struct widen_plan {
    widen_plan_tensor *tensors; /* output order */
    size_t count;
    uint64_t data_bytes;        /* sum of output tensor bytes */
    widen_map_entry *identity;  /* one SOURCE entry (channel 0), for cast-only tensors */
} widen_plan;

/* Builds the plan of `transform` over `ckpt`: output tensors in the reference writer's order (dtype
 * alignment descending, then name). WIDEN_EUSAGE for requests the checkpoint cannot satisfy. */
widen_status widen_plan_build(const widen_checkpoint *ckpt, const widen_transform *transform,
                              widen_plan *plan, widen_error *err);
void widen_plan_free(widen_plan *plan);

/* Receives the output bytes of plan tensor `index`, in order: `len` bytes starting at `offset`
 * within that tensor. Returns a status (non-zero stops the run). */
typedef widen_status (*widen_sink_fn)(void *user, size_t index, uint64_t offset, const void *data,
                                      size_t len, widen_error *err);

/* Optional: moves `len` input bytes at file offset `in_offset` to the sink unchanged, without them
 * passing through this process (copy_file_range); WIDEN_EUSAGE from it means "cannot here, send
 * the bytes instead". */
typedef widen_status (*widen_copy_fn)(void *user, size_t index, uint64_t offset, uint64_t in_offset, size_t len,
                                      widen_error *err);

/* Optional, with a copy that takes one item at a time: told, once the item's copy and hashing are
 * both done, the CRC-32 of the copied bytes, which the hashing pass computes from the same reads (a
 * zip record needs it, and the copying thread then reads nothing). */
typedef widen_status (*widen_copied_fn)(void *user, size_t index, uint64_t len, uint32_t crc32, widen_error *err);

typedef struct widen_exec_options {
    unsigned threads;
    widen_isa isa; /* WIDEN_ISA_COUNT: the active ISA */
    widen_progress_fn progress;
    void *progress_user;
    widen_copy_fn copy; /* NULL: every byte goes through the sink */
    int copy_one_item;  /* the copy takes one item at a time (items are separate records) */
    widen_copied_fn copied;
    /* runs the copy moves are not hashed (no manifest wants their hashes): read only for a CRC-32 the
     * sink needs and the plan does not know; their in_hash and out_hash stay zero */
    int unhashed_copies;
    /* Optional: a sink (and copy) that takes tensors in any order, from several threads at once (a
     * file written at offsets). Each thread then calls them with a user of its own, lane(sink_user,
     * k) for k < threads; the bytes of one tensor still come in order, from one thread. */
    void *(*lane)(void *sink_user, unsigned k);
} widen_exec_options;

/* Streams every plan tensor through the sink in output order, in bounded memory, and fills each
 * tensor's in_hash and out_hash. With a lane and threads, tensors go side by side instead: each on
 * one thread, the largest first, except tensors over a thread's share of the output, which go
 * first, one at a time, split across all threads. The bytes and hashes are the same. */
widen_status widen_execute(const widen_checkpoint *ckpt, widen_plan *plan,
                           const widen_exec_options *options, widen_sink_fn sink, void *sink_user,
                           widen_error *err);

/* The checkpoint's read-only file descriptor (for copy_file_range). */
int widen_checkpoint_fd(const widen_checkpoint *ckpt);

/* Releases the pages of [offset, offset+len) of the checkpoint's mapping from this process. */
static inline void widen_release(const widen_checkpoint *ckpt, uint64_t offset, uint64_t len)
{
    widen_mapping m = {ckpt->map, ckpt->size, ckpt->fd};
    widen_mapping_release(&m, offset, len);
}

/* Transform internals shared by plan, apply and verify. */
typedef struct widen_tensor_edit {
    char *name;
    int axis;
    widen_map_entry *map;
    size_t count;
} widen_tensor_edit;

struct widen_transform {
    widen_tensor_edit *edits;
    size_t count;
    widen_table by_name; /* edit name -> index */
    bool cast;
    widen_dtype cast_to;
};

const widen_tensor_edit *widen_transform_edit(const widen_transform *transform, const char *name);
/* The record widen writes of a transform read from `recorded`: its JSON exactly as apply writes it,
 * with the recorded "tool" where that names a widen version (files of other versions verify). An
 * output whose record differs from it (another key, another order, another text) is not widen's
 * output. malloc'ed; NULL when out of memory. */
char *widen_transform_canonical(const widen_transform *transform, const char *recorded);

/* Formats a map entry as --map syntax ("2", "zero", "const:0.5"). */
void widen_map_entry_format(const widen_map_entry *entry, char *out, size_t size);

/* safetensors writer: the header (u64 length + padded JSON) for the plan's output, with the
 * input's metadata plus the provenance key. malloc'ed. */
widen_status widen_safetensors_header(const widen_plan *plan, const widen_checkpoint *in,
                                      const char *provenance, unsigned char **header, size_t *len,
                                      widen_error *err);

/* A run's progress over steps: widen_meter_progress (a widen_progress_fn over a step's own done and
 * total) reports base + share * done / total of the run's fixed `total` to fn, never less than it
 * reported before. widen_meter_next ends the step (its share counts as done) and starts the next. */
typedef struct widen_meter {
    widen_progress_fn fn; /* NULL: nothing reported, nothing stops */
    void *user;
    uint64_t total;
    uint64_t base, share, reported;
} widen_meter;

void widen_meter_next(widen_meter *m, uint64_t share);
int widen_meter_progress(void *meter, uint64_t done, uint64_t total);
/* Reports the run's end (done = total) unless that was the last report: for a run that stopped
 * short of its total with a verdict (a difference found). Returns fn's answer (0 when not called). */
int widen_meter_end(widen_meter *m);

/* Thread pool: runs fn(user, part) for part in [0, parts) on up to `threads` threads (the caller
 * included) and returns when all are done. */
typedef struct widen_pool widen_pool;
widen_pool *widen_pool_new(unsigned threads);
void widen_pool_free(widen_pool *pool);
unsigned widen_pool_threads(const widen_pool *pool);
void widen_pool_run(widen_pool *pool, size_t parts, void (*fn)(void *user, size_t part), void *user);

#endif
