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

#endif
