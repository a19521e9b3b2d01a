/* pickle.h: a restricted pickle VM (the opcodes and globals torch.load(weights_only=True) accepts,
 * executing nothing) that turns data.pkl into a tree of nodes, and a writer that emits a tree again. */
#ifndef WIDEN_PICKLE_H
#define WIDEN_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "../error.h"

typedef enum pk_kind {
    PK_NONE, PK_BOOL, PK_INT, PK_FLOAT, PK_STR, PK_BYTES,
    PK_TUPLE, PK_LIST, PK_DICT, PK_SET,
    PK_GLOBAL,  /* module + name */
    PK_REDUCE,  /* items[0](*items[1]) */
    PK_NEWOBJ,  /* items[0].__new__(items[0], *items[1]) */
    PK_PERSID   /* persistent id: items[0] is the tuple */
} pk_kind;

typedef struct pk_node {
    pk_kind kind;
    int64_t i;            /* BOOL, INT */
    double f;             /* FLOAT */
    char *s;              /* STR, BYTES (len bytes), GLOBAL module */
    char *name;           /* GLOBAL name */
    size_t len;
    struct pk_node **items; /* TUPLE/LIST/SET elements, REDUCE/NEWOBJ/PERSID operands, appended items */
    size_t count, cap;
    struct pk_node **kv;  /* SETITEM(S) key/value pairs, flattened (DICT and dict-like objects) */
    size_t kv_count, kv_cap;
    struct pk_node *state; /* BUILD */
    long memo;             /* writer: memo slot once emitted, -1 before */
} pk_node;

typedef struct pk_arena pk_arena;

/* Runs the VM over `data`; *root is the unpickled tree, owned by *arena. Exit 3 (naming the opcode,
 * global or problem) for anything outside the allowlist or malformed. */
widen_status pk_load(const unsigned char *data, size_t len, const char *what, pk_arena **arena, pk_node **root,
                     widen_error *err);
pk_arena *pk_arena_new(void);
void pk_arena_free(pk_arena *arena);
int pk_kv_append(pk_node *parent, pk_node *key, pk_node *value);
pk_node *pk_new(pk_arena *arena, pk_kind kind);
int pk_append(pk_arena *arena, pk_node *parent, pk_node *child);
/* Node constructors (NULL when out of memory; a NULL argument gives NULL). */
pk_node *pk_str(pk_arena *arena, const char *text);
pk_node *pk_int(pk_arena *arena, int64_t value);
pk_node *pk_global(pk_arena *arena, const char *module, const char *name);
pk_node *pk_tuple(pk_arena *arena, pk_node **items, size_t count);
pk_node *pk_call(pk_arena *arena, pk_node *callable, pk_node *args); /* REDUCE */

/* Sets every node's memo field (the writer's slot, or a walk's visited mark) back to -1. */
void pk_clear_marks(pk_arena *arena);

int pk_is_global(const pk_node *n, const char *module, const char *name);

/* Serialises `root` as pickle protocol 2 into a growing buffer. */
typedef struct pk_buffer {
    unsigned char *data;
    size_t len, cap;
    long next_memo;
} pk_buffer;
widen_status pk_dump(pk_arena *arena, const pk_node *root, pk_buffer *out, widen_error *err);

#endif
