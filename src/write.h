/* write.h: the writers: each lays out an output file and streams its data through the executor
 * into a widen_output (a file for apply, a comparison for verify). Between apply/verify and the
 * data path. */
#ifndef WIDEN_WRITE_H
#define WIDEN_WRITE_H

#include "format/zip.h"
#include "internal.h"

/* A safetensors file: the reference writer's header for the plan (the input's metadata, plus
 * {"format": "pt"} for a torch input, plus the provenance key), then every plan tensor. */
widen_status widen_safetensors_write(const widen_checkpoint *ckpt, widen_plan *plan, const char *provenance,
                                     widen_output *out, const widen_exec_options *options, widen_error *err);

/* For an output with write_at and copy_at: every plan tensor's bytes to output offset at[i], from
 * options->threads threads side by side (widen_execute's lanes); the output's position is left to
 * the caller. With crc, the tensors are zip records: each untouched one is copied alone, and crc[i]
 * gets the CRC-32 of tensor i's bytes. */
widen_status widen_write_tensors_at(const widen_checkpoint *ckpt, widen_plan *plan, const uint64_t *at, uint32_t *crc,
                                    widen_output *out, const widen_exec_options *options, widen_error *err);

/* Where a written archive put what: for each output storage key, whose bytes it holds; and every
 * entry, with its local header and data offsets. */
typedef struct widen_torch_layout {
    long *source; /* per key: the input storage (>= 0), or -1 - (tensor plan index) of a transformed tensor */
    size_t keys;
    widen_zip_entry *entries;
    size_t entry_count;
} widen_torch_layout;
void widen_torch_layout_free(widen_torch_layout *layout);

/* Writes the torch zip checkpoint of `ckpt` (a torch input, or a safetensors one seen as a state
 * dict) to `out`: the tensors of `tensor_plan` that have a map get new storages, and every storage
 * the plan's cast applies to is cast. Fills the plan's hashes; fills `layout` if not NULL. */
widen_status widen_torch_write(widen_checkpoint *ckpt, const widen_transform *transform, widen_plan *tensor_plan,
                               widen_output *out, const widen_exec_options *options, widen_torch_layout *layout,
                               widen_error *err);

/* The hashes a manifest needs of the tensors a .pt output did not hash whole (views into part of a
 * storage, strided tensors): one more read of those tensors alone. */
widen_status widen_torch_hash_views(const widen_checkpoint *ckpt, widen_plan *plan, const widen_exec_options *options,
                                    widen_error *err);

/* An .npz archive as np.savez writes one to a file (NumPy 1.24, Python 3.11's zipfile): a stored
 * member NAME.npy per plan tensor, in the input's order (the plan is sorted into it), each a
 * version 1.0 .npy header and the data; local headers with CRC and sizes and a ZIP64 extra
 * (force_zip64), times fixed at 1980-01-01 as zipfile's own default; ZIP64 end records only where
 * needed. The archive comment records the provenance (np.load ignores it), where it fits. */
#define WIDEN_NPY_HEADER_MAX 1024      /* a .npy header of 16 dimensions of 20 digits fits, padded */
#define WIDEN_NPZ_COMMENT_MAX 65535u   /* a zip comment's length is 16 bits */

typedef struct widen_npz_member {
    uint64_t header_offset, npy_offset, data_offset; /* local header, .npy header, tensor bytes */
    uint64_t size;                                   /* .npy header and data */
    uint32_t crc;
    uint16_t flags;
} widen_npz_member;

/* Where a written archive put what, for verify to name a difference. */
typedef struct widen_npz_layout {
    widen_npz_member *members; /* per plan tensor, in output order */
    size_t count;
    uint64_t directory_offset, comment_offset;
} widen_npz_layout;
void widen_npz_layout_free(widen_npz_layout *layout);

/* WIDEN_EUSAGE where the plan's output cannot be an .npz that np.load reads back as it is: a dtype
 * NumPy lacks (BF16, the float8s, F4/F6), or a name that is empty, not UTF-8, absolute, holds a '..'
 * component, is another's but for ASCII case, or is another's plus ".npy" (np.load would answer
 * it with the other). */
widen_status widen_npz_check(const widen_checkpoint *ckpt, const widen_plan *plan, widen_error *err);

/* Writes the .npz of `plan` (sorted into the input's order first) to `out`, which must have reserve
 * and patch; fills the plan's hashes, and `layout` if not NULL. */
widen_status widen_npz_write(const widen_checkpoint *ckpt, widen_plan *plan, const char *provenance, widen_output *out,
                             const widen_exec_options *options, widen_npz_layout *layout, widen_error *err);

/* The comment widen_npz_write records for `provenance`: itself, or NULL where it is too long. */
const char *widen_npz_comment_for(const char *provenance);

/* The archive comment of a zip checkpoint: the bytes after the end record that widen's zip reader
 * takes (not NUL-terminated); 1 and the text, or 0 if no end record is found. */
int widen_npz_comment(const widen_checkpoint *ckpt, const char **text, size_t *len);

#endif
