/* torch.h: PyTorch zip checkpoints (torch.save since 1.6): what widen keeps of one it has read. */
#ifndef WIDEN_TORCH_H
#define WIDEN_TORCH_H

#include "pickle.h"
#include "zip.h"

typedef struct torch_storage {
    char *key;
    widen_dtype dtype;
    uint64_t numel;   /* elements */
    const widen_zip_entry *entry;
    pk_node *type;    /* the storage class global */
} torch_storage;

typedef struct torch_tensor {
    pk_node *node;    /* the _rebuild_tensor_v2/v3 call */
    pk_node *holder;  /* the dict, list or tuple whose slot holds it (NULL: the root) */
    pk_node **slot;   /* that slot: the call, or a _rebuild_parameter wrapping it */
    size_t storage;
    uint64_t storage_offset; /* elements */
    int contiguous;
    uint64_t strides[WIDEN_MAX_RANK]; /* elements */
} torch_tensor;

typedef struct torch_state {
    widen_zip zip;
    char *prefix; /* top folder, with its slash */
    pk_arena *arena;
    pk_node *root;
    torch_storage *storages;
    size_t storage_count;
    torch_tensor *tensors; /* parallel to the checkpoint's tensors */
    char **other_paths;    /* dotted paths of values that are not tensors */
    size_t other_count;
} torch_state;

#endif
