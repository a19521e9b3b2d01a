/* pickle.h: a restricted pickle VM (exactly the opcodes and globals current torch's weights-only
 * unpickler accepts, executing nothing) that turns data.pkl into a graph of nodes, and a writer
 * that emits a graph again as protocol 2. Nodes live in an arena; strings point into the pickle. */
#ifndef WIDEN_PICKLE_H
#define WIDEN_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "../error.h"

typedef enum pk_kind {
    PK_NONE, PK_BOOL, PK_INT, PK_BIGINT, PK_FLOAT, PK_STR,
    PK_TUPLE, PK_LIST, PK_DICT, PK_SET,
    PK_GLOBAL,  /* an allowlisted global: `global` indexes pk_globals */
    PK_REDUCE,  /* items[0](*items[1]), then SETITEMS pairs from items[2] on */
    PK_NEWOBJ,  /* items[0].__new__(items[0], *items[1]), likewise */
    PK_PERSID   /* persistent id: items[0] is the ('storage', type, key, location, numel) tuple */
} pk_kind;

/* What widen knows of an allowlisted global. */
typedef enum pk_role {
    PK_ROLE_OTHER,            /* allowed, passed through as it is */
    PK_ROLE_ORDERED_DICT,     /* collections.OrderedDict */
    PK_ROLE_COUNTER,          /* collections.Counter */
    PK_ROLE_PARAMETER,        /* torch.nn.parameter.Parameter */
    PK_ROLE_TENSOR_CLASS,     /* torch.Tensor */
    PK_ROLE_REBUILD_V1,       /* torch._utils._rebuild_tensor (torch before 0.4) */
    PK_ROLE_REBUILD_V2,       /* torch._utils._rebuild_tensor_v2 */
    PK_ROLE_REBUILD_V3,       /* torch._utils._rebuild_tensor_v3 */
    PK_ROLE_REBUILD_PARAMETER, /* torch._utils._rebuild_parameter */
    PK_ROLE_REBUILD_PARAMETER_STATE, /* torch._utils._rebuild_parameter_with_state */
    PK_ROLE_FROM_TYPE_V2,     /* torch._tensor._rebuild_from_type_v2 */
    PK_ROLE_STORAGE,          /* a typed storage class (dtype: its element type, or -1) */
    PK_ROLE_UNTYPED_STORAGE,  /* torch.UntypedStorage */
    PK_ROLE_DTYPE             /* a torch dtype (dtype: the widen dtype, or -1) */
} pk_role;

typedef struct pk_global_info {
    const char *module, *name;
    uint8_t role;
    int8_t dtype; /* a widen_dtype, or -1 */
    uint8_t size; /* storage classes and dtypes: bytes per element (0: not a whole number) */
} pk_global_info;

extern const pk_global_info pk_globals[];

typedef struct pk_node {
    uint8_t kind;
    uint8_t mark;      /* walks' bits: pk_check_graph's 1 (on the path) and 2 (done), the torch walk's 4 and 8, PK_FROZEN */
    uint8_t global;    /* GLOBAL: its index in pk_globals */
    uint8_t flags;     /* PK_UNHASHABLE */
    uint32_t id;       /* index in the arena */
    union {
        int64_t i;     /* BOOL, INT; PERSID: the reader's storage index */
        uint64_t bits; /* FLOAT: the IEEE bits (NaN payloads kept) */
        size_t len;    /* STR, BIGINT: bytes (a big integer: minimal two's complement, little-endian) */
    };
    const char *s;      /* STR, BIGINT (not NUL-terminated) */
    struct pk_node **items;
    uint32_t count, cap;
    struct pk_node *state; /* BUILD */
    int32_t memo;          /* writer: memo slot once emitted, -1 before */
    uint32_t height;       /* graph check: the longest path below */
} pk_node;

enum {
    PK_UNHASHABLE = 1, /* flags: a list, dict, set or mutable object, or a tuple holding one: no dict key or set item */
    PK_OWN_ITEMS = 2,  /* flags, while loading: a set(list) whose list is its own (ADDITEMS may fill it) */
    PK_FROZEN = 16     /* mark, while loading: given to a call (REDUCE, NEWOBJ, BUILD), which read it then */
};

typedef struct pk_arena pk_arena;

/* Runs the VM over `data` (which must outlive the arena) up to its STOP; *root is the unpickled
 * graph, owned by *arena, and *used (may be NULL) the bytes up to and including the STOP. Exit 3,
 * naming the opcode, global or problem, for anything torch.load refuses under the allowlist of its
 * weights-only unpickler, and for what widen refuses on top (see pickle.c). */
widen_status pk_load(const unsigned char *data, size_t len, const char *what, pk_arena **arena, pk_node **root,
                     size_t *used, widen_error *err);
/* Refuses (exit 3) a graph (from root) with a cycle or deeper than max_depth; fills every reachable
 * node's height (the longest path below it) and leaves mark bits 1 and 2 set. Iterative: no input
 * can exhaust the stack. Once per loaded graph. */
widen_status pk_check_graph(pk_arena *arena, pk_node *root, uint32_t max_depth, const char *what, widen_error *err);

pk_arena *pk_arena_new(void);
void pk_arena_free(pk_arena *arena);
size_t pk_arena_count(const pk_arena *arena);
/* A NUL-terminated copy of `len` bytes, freed with the arena. */
char *pk_arena_strdup(pk_arena *arena, const char *text, size_t len);
pk_node *pk_arena_node(const pk_arena *arena, size_t id);

/* Node constructors (NULL when out of memory; a NULL argument gives NULL). Strings are copied. */
pk_node *pk_new(pk_arena *arena, pk_kind kind);
int pk_append(pk_arena *arena, pk_node *parent, pk_node *child);
pk_node *pk_str(pk_arena *arena, const char *text, size_t len);
pk_node *pk_int(pk_arena *arena, int64_t value);
pk_node *pk_bool(pk_arena *arena, int value);
pk_node *pk_global(pk_arena *arena, const char *module, const char *name);
pk_node *pk_tuple(pk_arena *arena, pk_node **items, size_t count);
pk_node *pk_call(pk_arena *arena, pk_node *callable, pk_node *args); /* REDUCE */
/* A copy of a node: same kind, value and children (not copied), no state. */
pk_node *pk_copy(pk_arena *arena, const pk_node *n);

/* The dict items of a dict-like node (a DICT, or a constructed object's SETITEMS pairs): *pairs
 * points at key, value, key, value, ... */
size_t pk_pairs(const pk_node *n, pk_node ***pairs);
int pk_pair_append(pk_arena *arena, pk_node *parent, pk_node *key, pk_node *value);

/* The allowlist entry of a GLOBAL node, NULL for any other node. */
const pk_global_info *pk_global_of(const pk_node *n);
/* The role of a GLOBAL node, or of a REDUCE/NEWOBJ node's callable; PK_ROLE_OTHER otherwise. */
pk_role pk_role_of(const pk_node *n);
int pk_str_is(const pk_node *n, const char *text);

/* A walk's stack, reused from one walk to the next. */
typedef struct pk_walk {
    pk_node **stack;
    size_t cap;
} pk_walk;
/* Sets mark bit `bit` on n and on every node below it that lacks it (children and BUILD states),
 * calling visit, when not NULL, on each node it marks; iterative. -1 when out of memory. */
int pk_mark_below(pk_walk *walk, pk_node *n, uint8_t bit, void (*visit)(void *user, pk_node *node), void *user);

/* Sets every node's memo back to -1 and mark to 0. Immutable leaves (None, booleans, ints 0..255,
 * the empty tuple) are shared within an arena, as Python shares them: never give one a state. */
void pk_clear_marks(pk_arena *arena);

/* Serialises `root` as pickle protocol 2 into a growing buffer. `persid`, when not NULL, is asked
 * for the tuple to write for each persistent id (the writer renumbers storages as it goes, in
 * emission order); NULL from it stops the dump with the status it puts in *st (having filled the
 * error). */
typedef struct pk_buffer {
    unsigned char *data;
    size_t len, cap;
    int32_t next_memo;
} pk_buffer;
typedef pk_node *(*pk_persid_fn)(void *user, pk_node *persid, widen_status *st);
widen_status pk_dump(pk_arena *arena, const pk_node *root, pk_persid_fn persid, void *user, pk_buffer *out,
                     widen_error *err);

#endif
