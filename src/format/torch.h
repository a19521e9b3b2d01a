/* torch.h: PyTorch zip checkpoints (torch.save since 1.6): what widen keeps of one it has read. */
#ifndef WIDEN_TORCH_H
#define WIDEN_TORCH_H

#include "../internal.h"
#include "pickle.h"
#include "zip.h"

/* Limits on what a pickle may describe, whatever the graph looks like. */
enum {
    TORCH_MAX_DEPTH = 1000,          /* nesting (the writer and the name walk recurse this deep) */
    TORCH_MAX_WRAPPERS = 4,          /* Parameter / _rebuild_from_type_v2 layers around one tensor */
};
#define TORCH_MAX_NAME_BYTES (128ull << 20) /* all dotted paths of a file, and its tensors' storage keys, together */

/* A storage record, as the persistent ids name it (torch's first reference of a key decides its
 * type and size; widen refuses references that disagree). */
typedef struct torch_storage {
    const char *key; /* points into the pickle */
    size_t key_len;
    const widen_zip_entry *entry;
    const pk_node *type;  /* the storage class */
    widen_dtype dtype;    /* the class's element type (UntypedStorage: U8); WIDEN_DTYPE_COUNT: none widen names */
    unsigned esize;       /* bytes per element of the class */
    uint64_t numel;       /* elements of the class */
    uint8_t pinned;       /* reached by something but a named tensor: its bytes pass through as they are */
    uint8_t v3_viewed;    /* a named _rebuild_tensor_v3 tensor views it (its dtype is an argument) */
} torch_storage;

/* A named tensor: where it sits in the graph, and what it views. */
typedef struct torch_tensor {
    pk_node *site;   /* what the slot holds: the rebuild call, or a Parameter or _rebuild_from_type_v2 around it */
    pk_node *holder; /* the container whose items[slot] is the site; NULL: the root */
    uint32_t slot;
    uint8_t path[2 * TORCH_MAX_WRAPPERS + 2]; /* item indices from the site down to the rebuild arguments */
    uint8_t depth;
    uint8_t v3;
    pk_node *args; /* the rebuild arguments: (storage, offset, size, stride, ...) */
    size_t storage;
    uint64_t storage_offset; /* elements */
    int contiguous;
    uint64_t strides[WIDEN_MAX_RANK]; /* elements */
} torch_tensor;

typedef struct torch_state {
    widen_zip zip;
    char *prefix; /* the input's top folder, with its slash */
    pk_arena *arena;
    pk_node *root;
    torch_storage *storages; /* every storage a persistent id names, in the order torch loads them */
    size_t storage_count;
    widen_table storage_keys;
    torch_tensor *tensors; /* parallel to the checkpoint's tensors */
    size_t other_count;    /* named values that are not tensors widen reads */
    char *other_paths[8];  /* the first of them (in the arena) */
    size_t unread_records; /* archive entries no persistent id names (torch.load does not read them) */
    int legacy;              /* a legacy (pre-zip) torch.save file: zip lists its storages, an entry each, named by key */
    widen_table legacy_keys; /* legacy: storage key (as torch compares it, exactly) -> zip entry */
    size_t legacy_views;     /* legacy: storage views, whose entries follow the key list's */
} torch_state;

/* The storage class torch.save names for a dtype (FloatStorage ...), NULL where it writes
 * UntypedStorage and _rebuild_tensor_v3. */
const char *widen_torch_storage_name(widen_dtype dtype);
/* The torch dtype global for a widen dtype (float8_e4m3fn ...), NULL if none. */
const char *widen_torch_dtype_name(widen_dtype dtype);
void widen_torch_free(void *state);
/* After data.pkl (or a legacy file's object pickle) is loaded into ts->arena and ts->root, and its
 * records are listed in ts->zip: the storages, the named tensors, the checks on them. */
widen_status widen_torch_read_graph(widen_checkpoint *c, torch_state *ts, const char *what, widen_error *err);
/* A legacy torch.save file (five pickles, then the storages), read into the same state as a zip one. */
widen_status widen_torch_legacy_read(widen_checkpoint *c, widen_error *err);

/* A safetensors checkpoint seen as a torch one: the object graph torch.save(state_dict) would pickle. */
widen_status widen_torch_synthesize(widen_checkpoint *c, widen_error *err);

#endif
