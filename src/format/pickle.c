/* pickle.c: a restricted pickle VM and a pickle writer. The VM accepts exactly the globals current
 * torch's weights-only unpickler accepts (torch/_weights_only_unpickler.py), decodes strings as it
 * does, and builds a graph; it calls nothing. Its opcodes are that unpickler's, plus those of
 * protocols 3 to 5 that torch.save writes and torch.load's full unpickler reads (FRAME, MEMOIZE,
 * SHORT_BINUNICODE, BINUNICODE8, STACK_GLOBAL, ADDITEMS, the BINBYTES family): they build nothing a
 * protocol 2 pickle cannot (bytes become _codecs.encode calls, sets builtins.set calls, as protocol 2
 * spells them), so the graph, and any rewrite of it, is one torch's weights-only loader reads. Where torch would call a constructor
 * whose outcome widen cannot model, the VM refuses (refusing is always allowed; reading something
 * other than what torch reads never is). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../../include/widen/widen.h"
#include "../table.h"
#include "pickle.h"

/* The globals torch.load(weights_only=True) allows (its _get_allowed_globals), keyed by full path
 * "module.name" as torch keys them. */
const pk_global_info pk_globals[] = {
    {"collections", "OrderedDict", PK_ROLE_ORDERED_DICT, -1, 0},
    {"collections", "Counter", PK_ROLE_COUNTER, -1, 0},
    {"torch.nn.parameter", "Parameter", PK_ROLE_PARAMETER, -1, 0},
    {"torch.serialization", "_get_layout", PK_ROLE_OTHER, -1, 0},
    {"torch", "Size", PK_ROLE_OTHER, -1, 0},
    {"torch", "Tensor", PK_ROLE_TENSOR_CLASS, -1, 0},
    {"torch", "device", PK_ROLE_OTHER, -1, 0},
    {"_codecs", "encode", PK_ROLE_OTHER, -1, 0},
    {"builtins", "bytearray", PK_ROLE_OTHER, -1, 0},
    {"builtins", "set", PK_ROLE_OTHER, -1, 0},
    {"builtins", "complex", PK_ROLE_OTHER, -1, 0},
    {"torch", "float64", PK_ROLE_DTYPE, WIDEN_F64, 8},
    {"torch", "float32", PK_ROLE_DTYPE, WIDEN_F32, 4},
    {"torch", "float16", PK_ROLE_DTYPE, WIDEN_F16, 2},
    {"torch", "int64", PK_ROLE_DTYPE, WIDEN_I64, 8},
    {"torch", "int32", PK_ROLE_DTYPE, WIDEN_I32, 4},
    {"torch", "int16", PK_ROLE_DTYPE, WIDEN_I16, 2},
    {"torch", "int8", PK_ROLE_DTYPE, WIDEN_I8, 1},
    {"torch", "uint8", PK_ROLE_DTYPE, WIDEN_U8, 1},
    {"torch", "bool", PK_ROLE_DTYPE, WIDEN_BOOL, 1},
    {"torch", "bfloat16", PK_ROLE_DTYPE, WIDEN_BF16, 2},
    {"torch", "complex128", PK_ROLE_DTYPE, -1, 16},
    {"torch", "complex64", PK_ROLE_DTYPE, WIDEN_C64, 8},
    {"torch", "qint8", PK_ROLE_DTYPE, -1, 1},
    {"torch", "qint32", PK_ROLE_DTYPE, -1, 4},
    {"torch", "quint8", PK_ROLE_DTYPE, -1, 1},
    {"torch", "quint4x2", PK_ROLE_DTYPE, -1, 1},
    {"torch", "quint2x4", PK_ROLE_DTYPE, -1, 1},
    {"torch", "float8_e5m2", PK_ROLE_DTYPE, WIDEN_F8_E5M2, 1},
    {"torch", "float8_e4m3fn", PK_ROLE_DTYPE, WIDEN_F8_E4M3, 1},
    {"torch", "float8_e5m2fnuz", PK_ROLE_DTYPE, WIDEN_F8_E5M2FNUZ, 1},
    {"torch", "float8_e4m3fnuz", PK_ROLE_DTYPE, WIDEN_F8_E4M3FNUZ, 1},
    {"torch", "float8_e8m0fnu", PK_ROLE_DTYPE, WIDEN_F8_E8M0, 1},
    {"torch", "bits8", PK_ROLE_DTYPE, -1, 1},
    {"torch", "bits16", PK_ROLE_DTYPE, -1, 2},
    {"torch", "bits1x8", PK_ROLE_DTYPE, -1, 1},
    {"torch", "bits2x4", PK_ROLE_DTYPE, -1, 1},
    {"torch", "bits4x2", PK_ROLE_DTYPE, -1, 1},
    {"torch", "complex32", PK_ROLE_DTYPE, -1, 4},
    {"torch", "uint16", PK_ROLE_DTYPE, WIDEN_U16, 2},
    {"torch", "uint32", PK_ROLE_DTYPE, WIDEN_U32, 4},
    {"torch", "uint64", PK_ROLE_DTYPE, WIDEN_U64, 8},
    {"torch", "uint1", PK_ROLE_DTYPE, -1, 0},
    {"torch", "uint2", PK_ROLE_DTYPE, -1, 0},
    {"torch", "uint3", PK_ROLE_DTYPE, -1, 0},
    {"torch", "uint4", PK_ROLE_DTYPE, -1, 0},
    {"torch", "uint5", PK_ROLE_DTYPE, -1, 0},
    {"torch", "uint6", PK_ROLE_DTYPE, -1, 0},
    {"torch", "uint7", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int1", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int2", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int3", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int4", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int5", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int6", PK_ROLE_DTYPE, -1, 0},
    {"torch", "int7", PK_ROLE_DTYPE, -1, 0},
    {"torch", "DoubleTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "FloatTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "HalfTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "BFloat16Tensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "LongTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "IntTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "ShortTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "CharTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "ByteTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "BoolTensor", PK_ROLE_OTHER, -1, 0},
    {"torch", "DoubleStorage", PK_ROLE_STORAGE, WIDEN_F64, 8},
    {"torch", "FloatStorage", PK_ROLE_STORAGE, WIDEN_F32, 4},
    {"torch", "HalfStorage", PK_ROLE_STORAGE, WIDEN_F16, 2},
    {"torch", "LongStorage", PK_ROLE_STORAGE, WIDEN_I64, 8},
    {"torch", "IntStorage", PK_ROLE_STORAGE, WIDEN_I32, 4},
    {"torch", "ShortStorage", PK_ROLE_STORAGE, WIDEN_I16, 2},
    {"torch", "CharStorage", PK_ROLE_STORAGE, WIDEN_I8, 1},
    {"torch", "ByteStorage", PK_ROLE_STORAGE, WIDEN_U8, 1},
    {"torch", "BoolStorage", PK_ROLE_STORAGE, WIDEN_BOOL, 1},
    {"torch", "BFloat16Storage", PK_ROLE_STORAGE, WIDEN_BF16, 2},
    {"torch", "ComplexDoubleStorage", PK_ROLE_STORAGE, -1, 16},
    {"torch", "ComplexFloatStorage", PK_ROLE_STORAGE, WIDEN_C64, 8},
    {"torch", "QInt8Storage", PK_ROLE_STORAGE, -1, 1},
    {"torch", "QInt32Storage", PK_ROLE_STORAGE, -1, 4},
    {"torch", "QUInt8Storage", PK_ROLE_STORAGE, -1, 1},
    {"torch", "QUInt4x2Storage", PK_ROLE_STORAGE, -1, 1},
    {"torch", "QUInt2x4Storage", PK_ROLE_STORAGE, -1, 1},
    {"torch.storage", "UntypedStorage", PK_ROLE_UNTYPED_STORAGE, WIDEN_U8, 1},
    {"torch.storage", "TypedStorage", PK_ROLE_OTHER, -1, 0},
    {"torch", "per_tensor_affine", PK_ROLE_OTHER, -1, 0},
    {"torch", "per_tensor_symmetric", PK_ROLE_OTHER, -1, 0},
    {"torch", "per_channel_affine", PK_ROLE_OTHER, -1, 0},
    {"torch", "per_channel_symmetric", PK_ROLE_OTHER, -1, 0},
    {"torch", "per_channel_affine_float_qparams", PK_ROLE_OTHER, -1, 0},
    {"torch._utils", "_rebuild_parameter", PK_ROLE_REBUILD_PARAMETER, -1, 0},
    {"torch._utils", "_rebuild_parameter_with_state", PK_ROLE_REBUILD_PARAMETER_STATE, -1, 0},
    {"torch._utils", "_rebuild_qtensor", PK_ROLE_OTHER, -1, 0},
    {"torch._utils", "_rebuild_tensor", PK_ROLE_REBUILD_V1, -1, 0},
    {"torch._utils", "_rebuild_tensor_v2", PK_ROLE_REBUILD_V2, -1, 0},
    {"torch._utils", "_rebuild_tensor_v3", PK_ROLE_REBUILD_V3, -1, 0},
    {"torch._utils", "_rebuild_sparse_tensor", PK_ROLE_OTHER, -1, 0},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", PK_ROLE_OTHER, -1, 0},
    {"torch._utils", "_rebuild_wrapper_subclass", PK_ROLE_OTHER, -1, 0},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", PK_ROLE_OTHER, -1, 0},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor", PK_ROLE_OTHER, -1, 0},
    {"torch._tensor", "_rebuild_from_type_v2", PK_ROLE_FROM_TYPE_V2, -1, 0},
    {NULL, NULL, 0, -1, 0},
};

/* Python 2 spellings that protocol 2 pickles carry, mapped as torch maps them before its allowlist
 * (torch._utils NAME_MAPPING, checked first, then IMPORT_MAPPING). */
static const char *const name_mapping[][4] = {
    {"__builtin__", "xrange", "builtins", "range"},      {"__builtin__", "reduce", "functools", "reduce"},
    {"__builtin__", "intern", "sys", "intern"},          {"__builtin__", "unichr", "builtins", "chr"},
    {"__builtin__", "unicode", "builtins", "str"},       {"__builtin__", "long", "builtins", "int"},
    {"itertools", "izip", "builtins", "zip"},            {"itertools", "imap", "builtins", "map"},
    {"itertools", "ifilter", "builtins", "filter"},      {"itertools", "ifilterfalse", "itertools", "filterfalse"},
    {"itertools", "izip_longest", "itertools", "zip_longest"},
    {"UserDict", "IterableUserDict", "collections", "UserDict"}, {"UserList", "UserList", "collections", "UserList"},
    {"UserString", "UserString", "collections", "UserString"},   {"__builtin__", "basestring", "builtins", "str"},
    {"exceptions", "StandardError", "builtins", "Exception"},    {"UserDict", "UserDict", "collections", "UserDict"},
};
static const char *const import_mapping[][2] = {
    {"__builtin__", "builtins"}, {"copy_reg", "copyreg"}, {"Queue", "queue"}, {"repr", "reprlib"},
    {"_abcoll", "collections.abc"}, {"UserDict", "collections"}, {"UserList", "collections"},
    {"UserString", "collections"}, {"whichdb", "dbm"}, {"StringIO", "io"}, {"cStringIO", "io"},
};

/* ---------------------------------------------------------------------------------------------- */
/* Arena: nodes and their arrays bump-allocated in chunks, freed together.                          */

enum { CHUNK = 1u << 20 };

typedef struct chunk {
    struct chunk *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
} chunk;

enum { BLOCK_SHIFT = 14, BLOCK_NODES = 1u << BLOCK_SHIFT };

struct pk_arena {
    chunk *chunks;
    pk_node **blocks; /* nodes by id: blocks of BLOCK_NODES, contiguous (walks over them stay in cache) */
    size_t count, block_count;
    pk_node *small[256], *none, *truth[2], *empty; /* shared immutable leaves */
};

static void *arena_alloc(pk_arena *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    chunk *c = a->chunks;
    if (!c || c->size - c->used < size) {
        size_t n = size > CHUNK / 4 ? size : CHUNK;
        /* whole chunks faulted in at once: a million nodes fault page by page otherwise */
        chunk *fresh = mmap(NULL, sizeof *fresh + n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (fresh == MAP_FAILED) return NULL;
        fresh->used = 0;
        fresh->size = n;
        if (c && n != CHUNK) { /* a large block: behind the current chunk, which keeps filling */
            fresh->next = c->next;
            c->next = fresh;
            fresh->used = size;
            return fresh->data;
        }
        fresh->next = c;
        a->chunks = c = fresh;
    }
    void *p = c->data + c->used;
    c->used += size;
    return p;
}

pk_arena *pk_arena_new(void)
{
    return calloc(1, sizeof(pk_arena));
}

void pk_arena_free(pk_arena *a)
{
    if (!a) return;
    for (chunk *c = a->chunks, *next; c; c = next) {
        next = c->next;
        munmap(c, sizeof *c + c->size);
    }
    for (size_t b = 0; b < a->block_count; b++) munmap(a->blocks[b], BLOCK_NODES * sizeof(pk_node));
    free(a->blocks);
    free(a);
}

size_t pk_arena_count(const pk_arena *a) { return a->count; }
pk_node *pk_arena_node(const pk_arena *a, size_t id)
{
    return id < a->count ? &a->blocks[id >> BLOCK_SHIFT][id & (BLOCK_NODES - 1)] : NULL;
}

pk_node *pk_new(pk_arena *a, pk_kind kind)
{
    if (a->count >= UINT32_MAX) return NULL;
    if ((a->count & (BLOCK_NODES - 1)) == 0 && (a->count >> BLOCK_SHIFT) == a->block_count) {
        pk_node **grown = realloc(a->blocks, (a->block_count + 1) * sizeof *grown);
        if (!grown) return NULL;
        a->blocks = grown;
        void *block = mmap(NULL, BLOCK_NODES * sizeof(pk_node), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (block == MAP_FAILED) return NULL;
        a->blocks[a->block_count++] = block;
    }
    pk_node *n = &a->blocks[a->count >> BLOCK_SHIFT][a->count & (BLOCK_NODES - 1)]; /* zeroed by mmap */
    n->kind = (uint8_t)kind;
    n->memo = -1;
    n->id = (uint32_t)a->count++;
    return n;
}

int pk_append(pk_arena *a, pk_node *parent, pk_node *child)
{
    if (!child) return -1;
    if (parent->count == parent->cap) {
        if (parent->cap >= UINT32_MAX / 2) return -1;
        uint32_t cap = parent->cap ? 2 * parent->cap : 4;
        pk_node **grown = arena_alloc(a, cap * sizeof *grown);
        if (!grown) return -1;
        if (parent->count) memcpy(grown, parent->items, parent->count * sizeof *grown);
        parent->items = grown;
        parent->cap = cap;
    }
    parent->items[parent->count++] = child;
    return 0;
}

int pk_mark_below(pk_walk *walk, pk_node *n, uint8_t bit, void (*visit)(void *user, pk_node *node), void *user)
{
    if (n->mark & bit) return 0;
    size_t sp = 0;
    n->mark |= bit;
    for (pk_node *cur = n;;) {
        if (visit) visit(user, cur);
        size_t need = sp + cur->count + 1;
        if (need > walk->cap) {
            size_t cap = walk->cap ? 2 * walk->cap : 256;
            while (cap < need) cap *= 2;
            pk_node **grown = realloc(walk->stack, cap * sizeof *grown);
            if (!grown) return -1;
            walk->stack = grown;
            walk->cap = cap;
        }
        for (uint32_t i = 0; i < cur->count; i++)
            if (!(cur->items[i]->mark & bit)) {
                cur->items[i]->mark |= bit;
                walk->stack[sp++] = cur->items[i];
            }
        if (cur->state && !(cur->state->mark & bit)) {
            cur->state->mark |= bit;
            walk->stack[sp++] = cur->state;
        }
        if (!sp) return 0;
        cur = walk->stack[--sp];
    }
}

void pk_clear_marks(pk_arena *a)
{
    for (size_t i = 0; i < a->count; i++) {
        pk_node *n = &a->blocks[i >> BLOCK_SHIFT][i & (BLOCK_NODES - 1)];
        n->memo = -1;
        n->mark = 0;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Node helpers                                                                                     */

static size_t first_pair(const pk_node *n)
{
    return n->kind == PK_DICT ? 0 : 2; /* REDUCE/NEWOBJ: [callable, args, key, value, ...] */
}

size_t pk_pairs(const pk_node *n, pk_node ***pairs)
{
    size_t from = first_pair(n);
    if (n->kind != PK_DICT && n->kind != PK_REDUCE && n->kind != PK_NEWOBJ) from = n->count;
    *pairs = n->items ? n->items + from : NULL;
    return n->count > from ? (n->count - from) / 2 : 0;
}

int pk_pair_append(pk_arena *a, pk_node *parent, pk_node *key, pk_node *value)
{
    return pk_append(a, parent, key) || pk_append(a, parent, value) ? -1 : 0;
}

char *pk_arena_strdup(pk_arena *a, const char *text, size_t len)
{
    char *copy = arena_alloc(a, len + 1);
    if (!copy) return NULL;
    memcpy(copy, text, len);
    copy[len] = '\0';
    return copy;
}

pk_node *pk_str(pk_arena *a, const char *text, size_t len)
{
    if (!text) return NULL;
    char *copy = pk_arena_strdup(a, text, len);
    pk_node *n = copy ? pk_new(a, PK_STR) : NULL;
    if (!n) return NULL;
    n->s = copy;
    n->len = len;
    return n;
}

pk_node *pk_int(pk_arena *a, int64_t v)
{
    if (v >= 0 && v < 256 && a->small[v]) return a->small[v];
    pk_node *n = pk_new(a, PK_INT);
    if (n) n->i = v;
    if (n && v >= 0 && v < 256) a->small[v] = n;
    return n;
}

pk_node *pk_bool(pk_arena *a, int v)
{
    v = v != 0;
    if (!a->truth[v] && (a->truth[v] = pk_new(a, PK_BOOL))) a->truth[v]->i = v;
    return a->truth[v];
}

static pk_node *pk_none(pk_arena *a)
{
    if (!a->none) a->none = pk_new(a, PK_NONE);
    return a->none;
}

static pk_node *pk_empty_tuple(pk_arena *a)
{
    if (!a->empty) a->empty = pk_new(a, PK_TUPLE);
    return a->empty;
}

static const pk_global_info *find_global(const char *module, size_t mlen, const char *name, size_t nlen)
{
    for (size_t g = 0; pk_globals[g].module; g++)
        if (strlen(pk_globals[g].module) == mlen && memcmp(pk_globals[g].module, module, mlen) == 0 &&
            strlen(pk_globals[g].name) == nlen && memcmp(pk_globals[g].name, name, nlen) == 0)
            return &pk_globals[g];
    return NULL;
}

pk_node *pk_global(pk_arena *a, const char *module, const char *name)
{
    const pk_global_info *g = module && name ? find_global(module, strlen(module), name, strlen(name)) : NULL;
    pk_node *n = g ? pk_new(a, PK_GLOBAL) : NULL;
    if (n) n->global = (uint8_t)(g - pk_globals);
    return n;
}

pk_node *pk_tuple(pk_arena *a, pk_node **items, size_t count)
{
    if (count == 0) return pk_empty_tuple(a);
    if (count > UINT32_MAX / 2) return NULL;
    pk_node *n = pk_new(a, PK_TUPLE);
    pk_node **slots = n ? arena_alloc(a, count * sizeof *slots) : NULL; /* a tuple never grows */
    if (!slots) return NULL;
    for (size_t i = 0; i < count; i++) {
        if (!(slots[i] = items[i])) return NULL;
        n->flags |= items[i]->flags & PK_UNHASHABLE;
    }
    n->items = slots;
    n->count = n->cap = (uint32_t)count;
    return n;
}

pk_node *pk_call(pk_arena *a, pk_node *callable, pk_node *args)
{
    pk_node *n = pk_new(a, PK_REDUCE);
    if (!n || pk_append(a, n, callable) || pk_append(a, n, args)) return NULL;
    return n;
}

pk_node *pk_copy(pk_arena *a, const pk_node *src)
{
    pk_node *n = pk_new(a, (pk_kind)src->kind);
    if (!n) return NULL;
    n->global = src->global;
    n->bits = src->bits;
    n->s = src->s;
    for (uint32_t i = 0; i < src->count; i++)
        if (pk_append(a, n, src->items[i])) return NULL;
    return n;
}

const pk_global_info *pk_global_of(const pk_node *n)
{
    return n && n->kind == PK_GLOBAL ? &pk_globals[n->global] : NULL;
}

pk_role pk_role_of(const pk_node *n)
{
    if (n && (n->kind == PK_REDUCE || n->kind == PK_NEWOBJ)) n = n->items[0];
    const pk_global_info *g = pk_global_of(n);
    return g ? (pk_role)g->role : PK_ROLE_OTHER;
}

int pk_str_is(const pk_node *n, const char *text)
{
    return n && n->kind == PK_STR && n->len == strlen(text) && memcmp(n->s, text, n->len) == 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* UTF-8, as Python decodes it: strict, or with "surrogatepass" (BINUNICODE).                       */

static int utf8_valid(const unsigned char *s, size_t n, int surrogates)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!k || n - i < k) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && s[i + 1] < 0xa0) return 0;                 /* overlong */
        if (c == 0xed && s[i + 1] >= 0xa0 && !surrogates) return 0; /* U+D800..U+DFFF */
        if (c == 0xf0 && s[i + 1] < 0x90) return 0;                 /* overlong */
        if (c == 0xf4 && s[i + 1] >= 0x90) return 0;                /* past U+10FFFF */
        i += k;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* The VM                                                                                           */

typedef struct memo_slot {
    uint32_t key;
    uint32_t used;
    pk_node *node;
} memo_slot;

typedef struct vm {
    const unsigned char *p, *end, *start;
    const char *what;
    pk_arena *arena;
    pk_node **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t mp, marks_cap;
    pk_node **dense;   /* memo entries below dense_cap (the pickle's own length bounds it): by index */
    size_t dense_cap;
    memo_slot *memo;   /* torch's memo is a dict: any 32-bit index; the others hashed */
    size_t memo_mask, memo_count;
    widen_table globals;
    pk_walk freezing; /* freeze's stack */
    int proto;          /* the last PROTO (-1: none): torch maps Python 2 names only under protocol 2 */
    size_t memo_len;    /* distinct memo keys: where MEMOIZE stores (Python's len(memo)) */
    const unsigned char *frame_end; /* the end of the furthest FRAME */
    widen_error *err;
    widen_status st;
} vm;

static int fail_at(vm *v, widen_status st)
{
    v->st = st;
    return -1;
}
#define FAIL(...) fail_at(v, widen_fail(v->err, WIDEN_EFORMAT, __VA_ARGS__))
#define NOMEM() fail_at(v, widen_fail(v->err, WIDEN_EIO, "out of memory"))

static int grow(void **array, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *p = realloc(*array, c * size);
    if (!p) return -1;
    *array = p;
    *cap = c;
    return 0;
}

static int need(vm *v, size_t n, const char *op)
{
    if ((size_t)(v->end - v->p) < n) return FAIL("%s: pickle ends inside %s", v->what, op);
    return 0;
}

static int push(vm *v, pk_node *n)
{
    if (!n || grow((void **)&v->stack, &v->stack_cap, v->sp + 1, sizeof *v->stack)) return NOMEM();
    v->stack[v->sp++] = n;
    return 0;
}

static size_t floor_of(const vm *v)
{
    return v->mp ? v->marks[v->mp - 1] : 0;
}

static pk_node *pop(vm *v, const char *op)
{
    if (v->sp <= floor_of(v)) {
        FAIL("%s: pickle opcode %s finds an empty stack", v->what, op);
        return NULL;
    }
    return v->stack[--v->sp];
}

static pk_node *top(vm *v, const char *op)
{
    if (v->sp <= floor_of(v)) {
        FAIL("%s: pickle opcode %s finds an empty stack", v->what, op);
        return NULL;
    }
    return v->stack[v->sp - 1];
}

/* Pops back to the last MARK; *from is the position of the first item above it. */
static int pop_mark(vm *v, const char *op, size_t *from)
{
    if (!v->mp) return FAIL("%s: pickle opcode %s without a MARK", v->what, op);
    *from = v->marks[--v->mp];
    return 0;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t x = 0;
    for (int i = n - 1; i >= 0; i--) x = x << 8 | p[i];
    return x;
}

static pk_node *unhashable(pk_node *n)
{
    if (n) n->flags |= PK_UNHASHABLE;
    return n;
}

static pk_node *scalar(vm *v, pk_kind kind, int64_t i)
{
    if (kind == PK_INT) return pk_int(v->arena, i);
    return pk_bool(v->arena, (int)i);
}

/* A string of `len` bytes at the cursor, pointing into the pickle. */
static int string(vm *v, size_t len, int surrogates, const char *op)
{
    if (!utf8_valid(v->p, len, surrogates)) return FAIL("%s: pickle %s holds a string that is not valid UTF-8", v->what, op);
    pk_node *n = pk_new(v->arena, PK_STR);
    if (!n) return NOMEM();
    n->s = (const char *)v->p;
    n->len = len;
    v->p += len;
    return push(v, n);
}

/* LONG1: n bytes, little-endian two's complement. Values that fit 64 bits are ints; larger ones keep
 * their minimal bytes. */
static int long1(vm *v)
{
    if (need(v, 1, "LONG1")) return -1;
    size_t k = *v->p++;
    if (need(v, k, "LONG1")) return -1;
    const unsigned char *b = v->p;
    v->p += k;
    int negative = k && (b[k - 1] & 0x80);
    while (k > 1 && b[k - 1] == (negative ? 0xff : 0x00) && ((b[k - 2] & 0x80) != 0) == negative) k--;
    if (k <= 8) {
        uint64_t x = le(b, (int)k);
        if (k && k < 8 && negative) x |= ~(uint64_t)0 << (8 * k);
        return push(v, pk_int(v->arena, (int64_t)x));
    }
    pk_node *n = pk_new(v->arena, PK_BIGINT);
    if (!n) return NOMEM();
    n->s = (const char *)b;
    n->len = k;
    return push(v, n);
}

static int memo_put(vm *v, uint32_t key, pk_node *node)
{
    /* writers number memo entries 0, 1, 2 ...: an array, as long as the index is no larger than the
     * pickle (each entry costs a BINPUT of two bytes at least) */
    if ((uint64_t)key <= (uint64_t)(v->end - v->start)) {
        if (key >= v->dense_cap) {
            size_t cap = v->dense_cap ? v->dense_cap : 1024;
            while (cap <= key) cap *= 2;
            pk_node **grown = realloc(v->dense, cap * sizeof *grown);
            if (!grown) return NOMEM();
            memset(grown + v->dense_cap, 0, (cap - v->dense_cap) * sizeof *grown);
            v->dense = grown;
            v->dense_cap = cap;
        }
        v->memo_len += !v->dense[key];
        v->dense[key] = node;
        return 0;
    }
    if ((v->memo_count + 1) * 2 > (v->memo ? v->memo_mask + 1 : 0)) {
        size_t n = v->memo ? 2 * (v->memo_mask + 1) : 256;
        memo_slot *slots = calloc(n, sizeof *slots);
        if (!slots) return NOMEM();
        for (size_t i = 0; v->memo && i <= v->memo_mask; i++)
            if (v->memo[i].used) {
                size_t j = (v->memo[i].key * 2654435761u) & (n - 1);
                while (slots[j].used) j = (j + 1) & (n - 1);
                slots[j] = v->memo[i];
            }
        free(v->memo);
        v->memo = slots;
        v->memo_mask = n - 1;
    }
    size_t j = (key * 2654435761u) & v->memo_mask;
    while (v->memo[j].used && v->memo[j].key != key) j = (j + 1) & v->memo_mask;
    if (!v->memo[j].used) v->memo_count++, v->memo_len++;
    v->memo[j] = (memo_slot){.key = key, .used = 1, .node = node};
    return 0;
}

static pk_node *memo_get(const vm *v, uint32_t key)
{
    if ((uint64_t)key <= (uint64_t)(v->end - v->start)) return key < v->dense_cap ? v->dense[key] : NULL;
    if (!v->memo) return NULL;
    size_t j = (key * 2654435761u) & v->memo_mask;
    while (v->memo[j].used) {
        if (v->memo[j].key == key) return v->memo[j].node;
        j = (j + 1) & v->memo_mask;
    }
    return NULL;
}

static int freeze(vm *v, pk_node *n);
static int changed_after_use(vm *v);

/* A global by module and name, mapped from Python 2 names, then looked up by full path "module.name"
 * as torch's weights-only loader looks it up, and then held to the split torch.save writes. */
static int lookup_global(vm *v, const char *module, size_t mlen, const char *name, size_t nlen)
{
    int mapped = v->proto != 2; /* torch maps only what a protocol 2 pickle names */
    for (size_t i = 0; i < sizeof name_mapping / sizeof name_mapping[0] && !mapped; i++)
        if (strlen(name_mapping[i][0]) == mlen && memcmp(name_mapping[i][0], module, mlen) == 0 &&
            strlen(name_mapping[i][1]) == nlen && memcmp(name_mapping[i][1], name, nlen) == 0) {
            module = name_mapping[i][2], mlen = strlen(module);
            name = name_mapping[i][3], nlen = strlen(name);
            mapped = 1;
        }
    for (size_t i = 0; i < sizeof import_mapping / sizeof import_mapping[0] && !mapped; i++)
        if (strlen(import_mapping[i][0]) == mlen && memcmp(import_mapping[i][0], module, mlen) == 0) {
            module = import_mapping[i][1], mlen = strlen(module);
            mapped = 1;
        }
    size_t flen = mlen + 1 + nlen;
    char *full = malloc(flen + 1);
    if (!full) return NOMEM();
    memcpy(full, module, mlen);
    full[mlen] = '.';
    memcpy(full + mlen + 1, name, nlen);
    full[flen] = '\0';
    size_t g;
    int found = widen_table_get(&v->globals, full, flen, &g);
    /* torch's weights-only loader looks the path up whole; its full unpickler (the reference for
     * protocols 4 and 5 and legacy files) imports the module and fails on a split torch.save never
     * writes ('torch' and '_utils._rebuild_tensor_v2'): refused, so that both would read it alike */
    if (found && (strlen(pk_globals[g].module) != mlen || memcmp(pk_globals[g].module, module, mlen) != 0)) {
        int r = FAIL("%s: pickle names %.*s split as module '%.*s' and name '%.*s', which torch.save never writes", v->what,
                     (int)(flen > 200 ? 200 : flen), full, (int)(mlen > 100 ? 100 : mlen), module,
                     (int)(nlen > 100 ? 100 : nlen), name);
        free(full);
        return r;
    }
    if (!found) {
        /* the path may hold any byte but a newline: shown escaped (widen_fail escapes messages) */
        int r = FAIL("%s: pickle refers to %.*s, which is not on the allowlist of torch.load(weights_only=True)", v->what,
                     (int)(flen > 200 ? 200 : flen), full);
        free(full);
        return r;
    }
    free(full);
    pk_node *n = pk_new(v->arena, PK_GLOBAL);
    if (!n) return NOMEM();
    n->global = (uint8_t)g;
    return push(v, n);
}

/* GLOBAL: two lines, decoded as strict UTF-8. */
static int global(vm *v)
{
    const unsigned char *line[2];
    size_t len[2];
    for (int k = 0; k < 2; k++) {
        const unsigned char *nl = memchr(v->p, '\n', (size_t)(v->end - v->p));
        if (!nl) return FAIL("%s: pickle GLOBAL without a newline", v->what);
        line[k] = v->p;
        len[k] = (size_t)(nl - v->p);
        v->p = nl + 1;
        if (!utf8_valid(line[k], len[k], 0)) return FAIL("%s: pickle GLOBAL names something that is not valid UTF-8", v->what);
    }
    return lookup_global(v, (const char *)line[0], len[0], (const char *)line[1], len[1]);
}

/* STACK_GLOBAL (protocol 4): module and name are strings on the stack. */
static int stack_global(vm *v)
{
    pk_node *name = pop(v, "STACK_GLOBAL"), *module = name ? pop(v, "STACK_GLOBAL") : NULL;
    if (!module) return -1;
    if (name->kind != PK_STR || module->kind != PK_STR)
        return FAIL("%s: pickle STACK_GLOBAL of something that is not two strings", v->what);
    return lookup_global(v, module->s, module->len, name->s, name->len);
}

/* SHORT_BINBYTES, BINBYTES, BINBYTES8 (protocol 3 on): a bytes value, which a protocol 2 pickle (and
 * so widen's graph and writer) spells _codecs.encode(text, 'latin1'), text holding one character per
 * byte. */
static int bytes_value(vm *v, size_t len)
{
    char *text = malloc(2 * len + 1);
    if (!text) return NOMEM();
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = v->p[i];
        if (c < 0x80) {
            text[k++] = (char)c;
        } else {
            text[k++] = (char)(0xc0 | c >> 6);
            text[k++] = (char)(0x80 | (c & 0x3f));
        }
    }
    v->p += len;
    pk_node *items[2] = {pk_str(v->arena, text, k), pk_str(v->arena, "latin1", 6)};
    free(text);
    pk_node *fn = pk_global(v->arena, "_codecs", "encode"), *args = pk_tuple(v->arena, items, 2);
    pk_node *n = pk_new(v->arena, PK_REDUCE);
    if (!fn || !args || !n || pk_append(v->arena, n, fn) || pk_append(v->arena, n, args)) return NOMEM();
    return freeze(v, args) ? -1 : push(v, n);
}

/* ADDITEMS (protocol 4): items added to a set made by EMPTY_SET, which then becomes what a protocol 2
 * pickle writes for a set: builtins.set([items]). */
static int add_items(vm *v)
{
    size_t from = 0;
    if (pop_mark(v, "ADDITEMS", &from)) return -1;
    pk_node *set = from > floor_of(v) ? v->stack[from - 1] : NULL;
    int made = set && set->kind == PK_REDUCE && pk_global_of(set->items[0]) &&
               strcmp(pk_global_of(set->items[0])->name, "set") == 0 && set->items[1]->count == 1 &&
               set->items[1]->items[0]->kind == PK_LIST;
    if (!set || (set->kind != PK_SET && !made)) return FAIL("%s: pickle ADDITEMS to something that is not a set", v->what);
    for (size_t i = from; i < v->sp; i++)
        if (v->stack[i]->flags & PK_UNHASHABLE)
            return FAIL("%s: pickle builds a set of something Python cannot hash (torch.load fails on it)", v->what);
    if (set->mark & PK_FROZEN) return changed_after_use(v);
    if (v->sp > from && !(set->flags & PK_OWN_ITEMS)) {
        /* the set gets a list of its own: EMPTY_SET's has none yet, and set(L)'s L is a value of the
         * pickle, which other values may hold (the set copied it when it was made) */
        pk_node *list = pk_new(v->arena, PK_LIST), *args;
        if (!list || !(args = pk_tuple(v->arena, &list, 1))) return NOMEM();
        list->flags |= PK_UNHASHABLE;
        for (uint32_t i = 0; made && i < set->items[1]->items[0]->count; i++)
            if (pk_append(v->arena, list, set->items[1]->items[0]->items[i])) return NOMEM();
        if (!made) {
            pk_node *fn = pk_global(v->arena, "builtins", "set");
            set->kind = PK_REDUCE;
            if (!fn || pk_append(v->arena, set, fn) || pk_append(v->arena, set, args)) return NOMEM();
        } else {
            set->items[1] = args;
        }
        set->flags |= PK_OWN_ITEMS;
        made = 1;
    }
    for (size_t i = from; made && i < v->sp; i++)
        if (pk_append(v->arena, set->items[1]->items[0], v->stack[i])) return NOMEM();
    v->sp = from;
    return 0;
}

/* Whatever a call is given, it reads when it runs (set(items) copies them, _rebuild_from_type_v2 sets
 * its state, BUILD copies its dict): a later APPEND, SETITEM or BUILD on any of it would give torch one
 * value and a rewrite of the final graph another, so it is frozen, and changing it is refused. Each
 * node is frozen once, whatever reaches it again. */
static int freeze(vm *v, pk_node *n)
{
    return pk_mark_below(&v->freezing, n, PK_FROZEN, NULL, NULL) ? NOMEM() : 0;
}

static int changed_after_use(vm *v)
{
    return FAIL("%s: pickle changes a container after a call has read it (torch would load what the call saw, a "
                "rewrite what it became)", v->what);
}

/* The dict-likes SETITEM(S) may fill: dicts, and OrderedDict or Counter objects (torch checks the
 * target's type the same way). */
static int settable(const pk_node *n)
{
    if (n->kind == PK_DICT) return 1;
    pk_role r = n->kind == PK_REDUCE || n->kind == PK_NEWOBJ ? pk_role_of(n) : PK_ROLE_OTHER;
    return r == PK_ROLE_ORDERED_DICT || r == PK_ROLE_COUNTER;
}

/* REDUCE and NEWOBJ: callable and arguments. torch calls the callable; widen only records the call,
 * and refuses the calls whose result it could not know without making them. */
static int call(vm *v, unsigned char op)
{
    const char *opn = op == 'R' ? "REDUCE" : "NEWOBJ";
    pk_node *args = pop(v, opn), *fn = args ? pop(v, opn) : NULL;
    if (!fn) return -1;
    const pk_global_info *g = pk_global_of(fn);
    if (!g) return FAIL("%s: pickle %s on something that is not an allowed global", v->what, opn);
    if (args->kind != PK_TUPLE) return FAIL("%s: pickle %s of %s.%s with arguments that are not a tuple", v->what, opn, g->module, g->name);
    switch ((pk_role)g->role) {
    case PK_ROLE_STORAGE: case PK_ROLE_UNTYPED_STORAGE: case PK_ROLE_DTYPE: case PK_ROLE_TENSOR_CLASS:
        return FAIL("%s: pickle %s calls %s.%s, which torch.save never writes", v->what, opn, g->module, g->name);
    case PK_ROLE_ORDERED_DICT: case PK_ROLE_COUNTER:
        /* torch.save writes these empty and fills them with SETITEMS; items given to the constructor
         * would name values that no walk of the items sees */
        if (args->count)
            return FAIL("%s: pickle %s builds %s.%s from arguments; widen reads them filled item by item, as torch.save "
                        "writes them", v->what, opn, g->module, g->name);
        break;
    case PK_ROLE_PARAMETER: /* Parameter(data[, requires_grad]): torch requires a bool */
        if (op == 0x81 && (args->count > 2 || (args->count == 2 && args->items[1]->kind != PK_BOOL)))
            return FAIL("%s: pickle builds a Parameter with arguments torch refuses", v->what);
        break;
    default:
        if (op == 0x81 && strcmp(g->name, "Size") != 0)
            return FAIL("%s: pickle NEWOBJ of %s.%s, which torch.save never writes", v->what, g->module, g->name);
        break;
    }
    int container = g->role == PK_ROLE_ORDERED_DICT || g->role == PK_ROLE_COUNTER || strcmp(g->name, "set") == 0 ||
                    strcmp(g->name, "bytearray") == 0;
    if (strcmp(g->module, "builtins") == 0 && strcmp(g->name, "set") == 0 && args->count && /* set(items) hashes them */
        (args->items[0]->kind == PK_LIST || args->items[0]->kind == PK_TUPLE))
        for (uint32_t i = 0; i < args->items[0]->count; i++)
            if (args->items[0]->items[i]->flags & PK_UNHASHABLE)
                return FAIL("%s: pickle builds a set of something Python cannot hash (torch.load fails on it)", v->what);
    pk_node *n = pk_new(v->arena, op == 'R' ? PK_REDUCE : PK_NEWOBJ);
    if (!n || pk_append(v->arena, n, fn) || pk_append(v->arena, n, args)) return NOMEM();
    if (container) n->flags |= PK_UNHASHABLE;
    if (freeze(v, args)) return -1;
    return push(v, n);
}

/* BINPERSID: torch accepts a tuple ('storage', storage class, key, location, numel) and nothing
 * else (an int id fails its persistent_load); a legacy file's has a sixth item, its view (None, or
 * a tuple the legacy reader checks). The reader checks which of the two its format has. */
static int persid(vm *v)
{
    pk_node *t = pop(v, "BINPERSID");
    if (!t) return -1;
    if (t->kind != PK_TUPLE || t->count < 5 || t->count > 6 || !pk_str_is(t->items[0], "storage"))
        return FAIL("%s: pickle persistent id that is not a ('storage', type, key, location, numel) tuple", v->what);
    pk_role r = pk_role_of(t->items[1]);
    if (t->items[1]->kind != PK_GLOBAL || (r != PK_ROLE_STORAGE && r != PK_ROLE_UNTYPED_STORAGE))
        return FAIL("%s: pickle persistent id whose type is not a storage class", v->what);
    if (t->items[2]->kind != PK_STR || t->items[3]->kind != PK_STR || t->items[4]->kind != PK_INT || t->items[4]->i < 0)
        return FAIL("%s: pickle persistent id whose key, location or size is malformed", v->what);
    pk_node *n = pk_new(v->arena, PK_PERSID);
    if (!n || pk_append(v->arena, n, t)) return NOMEM();
    n->i = -1;
    return push(v, n);
}

static int step(vm *v, int *stop, pk_node **result)
{
    unsigned char op = *v->p++;
    pk_node *a, *b, *n;
    size_t from = 0;
    switch (op) {
    case 0x80: /* PROTO: torch accepts any number (and warns) */
        if (need(v, 1, "PROTO")) return -1;
        v->proto = *v->p++;
        return 0;
    case '.': /* STOP */
        if (!(*result = pop(v, "STOP"))) return -1;
        *stop = 1;
        return 0;
    case 'c': return global(v);
    case 'R': case 0x81: return call(v, op);
    case 'b': /* BUILD: only the attribute dict of an OrderedDict or Counter (state dicts' _metadata) */
        if (!(b = pop(v, "BUILD")) || !(a = top(v, "BUILD"))) return -1;
        if (!settable(a) || a->kind == PK_DICT)
            return FAIL("%s: pickle BUILD on an object that is not an OrderedDict or Counter", v->what);
        if (b->kind != PK_DICT) return FAIL("%s: pickle BUILD with a state that is not a dict", v->what);
        if (a->state) return FAIL("%s: pickle BUILD twice on one object", v->what);
        if (a->mark & PK_FROZEN) return changed_after_use(v);
        a->state = b;
        return freeze(v, b); /* its entries are copied into the object now */
    case 'a': /* APPEND */
        if (!(b = pop(v, "APPEND")) || !(a = top(v, "APPEND"))) return -1;
        if (a->kind != PK_LIST) return FAIL("%s: pickle APPEND to something that is not a list", v->what);
        if (a->mark & PK_FROZEN) return changed_after_use(v);
        return pk_append(v->arena, a, b) ? NOMEM() : 0;
    case 'e': /* APPENDS */
        if (pop_mark(v, "APPENDS", &from)) return -1;
        if (from <= floor_of(v) || v->stack[from - 1]->kind != PK_LIST)
            return FAIL("%s: pickle APPENDS to something that is not a list", v->what);
        a = v->stack[from - 1];
        if (a->mark & PK_FROZEN) return changed_after_use(v);
        for (size_t i = from; i < v->sp; i++)
            if (pk_append(v->arena, a, v->stack[i])) return NOMEM();
        v->sp = from;
        return 0;
    case 's': /* SETITEM */
        if (!(b = pop(v, "SETITEM")) || !(a = pop(v, "SETITEM")) || !(n = top(v, "SETITEM"))) return -1;
        if (!settable(n)) return FAIL("%s: pickle SETITEM on something that is not a dict", v->what);
        if (a->flags & PK_UNHASHABLE) return FAIL("%s: pickle uses something Python cannot hash as a dict key", v->what);
        if (n->mark & PK_FROZEN) return changed_after_use(v);
        return pk_pair_append(v->arena, n, a, b) ? NOMEM() : 0;
    case 'u': /* SETITEMS */
        if (pop_mark(v, "SETITEMS", &from)) return -1;
        if (from <= floor_of(v) || !settable(v->stack[from - 1]))
            return FAIL("%s: pickle SETITEMS on something that is not a dict", v->what);
        if ((v->sp - from) % 2) return FAIL("%s: pickle SETITEMS with an odd number of items", v->what);
        n = v->stack[from - 1];
        for (size_t i = from; i < v->sp; i += 2)
            if (v->stack[i]->flags & PK_UNHASHABLE)
                return FAIL("%s: pickle uses something Python cannot hash as a dict key", v->what);
        if (n->mark & PK_FROZEN) return changed_after_use(v);
        for (size_t i = from; i < v->sp; i += 2)
            if (pk_pair_append(v->arena, n, v->stack[i], v->stack[i + 1])) return NOMEM();
        v->sp = from;
        return 0;
    case '(': /* MARK */
        if (grow((void **)&v->marks, &v->marks_cap, v->mp + 1, sizeof *v->marks)) return NOMEM();
        v->marks[v->mp++] = v->sp;
        return 0;
    case 't': /* TUPLE */
        if (pop_mark(v, "TUPLE", &from)) return -1;
        n = from < v->sp ? pk_tuple(v->arena, v->stack + from, v->sp - from) : pk_empty_tuple(v->arena);
        v->sp = from;
        return push(v, n);
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
        size_t k = (size_t)(op - 0x84);
        if (v->sp < floor_of(v) + k) return FAIL("%s: pickle TUPLE%zu finds too few items", v->what, k);
        n = pk_tuple(v->arena, v->stack + v->sp - k, k);
        v->sp -= k;
        return push(v, n);
    }
    case 'N': return push(v, pk_none(v->arena));
    case 0x88: return push(v, scalar(v, PK_BOOL, 1));
    case 0x89: return push(v, scalar(v, PK_BOOL, 0));
    case ')': return push(v, pk_empty_tuple(v->arena));
    case ']': return push(v, unhashable(pk_new(v->arena, PK_LIST)));
    case '}': return push(v, unhashable(pk_new(v->arena, PK_DICT)));
    case 0x8f: return push(v, unhashable(pk_new(v->arena, PK_SET)));
    case 'J':
        if (need(v, 4, "BININT")) return -1;
        v->p += 4;
        return push(v, scalar(v, PK_INT, (int32_t)(uint32_t)le(v->p - 4, 4)));
    case 'K':
        if (need(v, 1, "BININT1")) return -1;
        return push(v, scalar(v, PK_INT, *v->p++));
    case 'M':
        if (need(v, 2, "BININT2")) return -1;
        v->p += 2;
        return push(v, scalar(v, PK_INT, (int64_t)le(v->p - 2, 2)));
    case 0x8a: return long1(v);
    case 'G': { /* BINFLOAT, big-endian */
        if (need(v, 8, "BINFLOAT")) return -1;
        uint64_t x = 0;
        for (int i = 0; i < 8; i++) x = x << 8 | v->p[i];
        v->p += 8;
        n = pk_new(v->arena, PK_FLOAT);
        if (n) n->bits = x;
        return push(v, n);
    }
    case 'X': { /* BINUNICODE: UTF-8 with surrogatepass */
        if (need(v, 4, "BINUNICODE")) return -1;
        size_t len = (size_t)le(v->p, 4);
        v->p += 4;
        if (need(v, len, "BINUNICODE")) return -1;
        return string(v, len, 1, "BINUNICODE");
    }
    case 'U': { /* SHORT_BINSTRING: torch.load decodes it as strict UTF-8 */
        if (need(v, 1, "SHORT_BINSTRING")) return -1;
        size_t len = *v->p++;
        if (need(v, len, "SHORT_BINSTRING")) return -1;
        return string(v, len, 0, "SHORT_BINSTRING");
    }
    case 'Q': return persid(v);
    /* protocols 3 to 5, as torch.load's unpickler reads them */
    case 0x95: { /* FRAME: the unpickler checks that the frame is there, then reads on as before */
        if (need(v, 8, "FRAME")) return -1;
        uint64_t len = le(v->p, 8);
        v->p += 8;
        if ((uint64_t)(v->end - v->p) < len) return FAIL("%s: pickle ends inside a FRAME", v->what);
        if (v->p + len > v->frame_end) v->frame_end = v->p + len;
        return 0;
    }
    case 0x94: /* MEMOIZE: memo[len(memo)] */
        if (!(a = top(v, "MEMOIZE"))) return -1;
        if (v->memo_len > UINT32_MAX) return FAIL("%s: pickle memo past 2^32 entries", v->what);
        return memo_put(v, (uint32_t)v->memo_len, a);
    case 0x8c: { /* SHORT_BINUNICODE */
        if (need(v, 1, "SHORT_BINUNICODE")) return -1;
        size_t len = *v->p++;
        if (need(v, len, "SHORT_BINUNICODE")) return -1;
        return string(v, len, 1, "SHORT_BINUNICODE");
    }
    case 0x8d: { /* BINUNICODE8 */
        if (need(v, 8, "BINUNICODE8")) return -1;
        uint64_t len = le(v->p, 8);
        v->p += 8;
        if ((uint64_t)(v->end - v->p) < len) return FAIL("%s: pickle ends inside BINUNICODE8", v->what);
        return string(v, (size_t)len, 1, "BINUNICODE8");
    }
    case 0x93: return stack_global(v);
    case 0x90: return add_items(v);
    case 'C': case 'B': case 0x8e: { /* SHORT_BINBYTES, BINBYTES, BINBYTES8 */
        int k = op == 'C' ? 1 : op == 'B' ? 4 : 8;
        if (need(v, (size_t)k, "BINBYTES")) return -1;
        uint64_t len = le(v->p, k);
        v->p += k;
        if ((uint64_t)(v->end - v->p) < len) return FAIL("%s: pickle ends inside BINBYTES", v->what);
        return bytes_value(v, (size_t)len);
    }
    case 'q': case 'r': { /* BINPUT, LONG_BINPUT */
        int k = op == 'q' ? 1 : 4;
        if (need(v, (size_t)k, "BINPUT")) return -1;
        uint32_t idx = (uint32_t)le(v->p, k);
        v->p += k;
        if (!(a = top(v, "BINPUT"))) return -1;
        return memo_put(v, idx, a);
    }
    case 'h': case 'j': { /* BINGET, LONG_BINGET */
        int k = op == 'h' ? 1 : 4;
        if (need(v, (size_t)k, "BINGET")) return -1;
        uint32_t idx = (uint32_t)le(v->p, k);
        v->p += k;
        if (!(a = memo_get(v, idx)))
            return FAIL("%s: pickle BINGET of memo entry %u, which was never stored", v->what, idx);
        return push(v, a);
    }
    default:
        if (op >= 0x20 && op < 0x7f) return FAIL("%s: pickle opcode '%c' (0x%02x) is not allowed", v->what, op, op);
        return FAIL("%s: pickle opcode 0x%02x is not allowed", v->what, op);
    }
}

/* "module.name" of every allowlisted global, the key torch looks globals up by. */
static char global_paths[sizeof pk_globals / sizeof pk_globals[0]][64];
static pthread_once_t paths_once = PTHREAD_ONCE_INIT;

static void build_paths(void)
{
    for (size_t g = 0; pk_globals[g].module; g++)
        snprintf(global_paths[g], sizeof global_paths[g], "%s.%s", pk_globals[g].module, pk_globals[g].name);
}

widen_status pk_load(const unsigned char *data, size_t len, const char *what, pk_arena **arena, pk_node **root,
                     size_t *used, widen_error *err)
{
    vm v = {.p = data, .end = data + len, .start = data, .frame_end = data, .what = what, .err = err, .proto = -1};
    *root = NULL;
    *arena = pk_arena_new();
    if (!*arena) return widen_fail(err, WIDEN_EIO, "out of memory");
    v.arena = *arena;
    pthread_once(&paths_once, build_paths);
    for (size_t g = 0; pk_globals[g].module && !v.st; g++)
        if (widen_table_put(&v.globals, global_paths[g], strlen(global_paths[g]), g, NULL) < 0)
            v.st = widen_fail(err, WIDEN_EIO, "out of memory");
    int stop = 0;
    pk_node *result = NULL;
    while (!stop && !v.st) {
        if (v.p >= v.end) {
            v.st = widen_fail(err, WIDEN_EFORMAT, "%s: pickle ends without STOP", what);
            break;
        }
        if (step(&v, &stop, &result) && !v.st) v.st = widen_fail(err, WIDEN_EIO, "out of memory");
    }
    free(v.stack);
    free(v.marks);
    free(v.memo);
    free(v.dense);
    free(v.freezing.stack);
    widen_table_free(&v.globals);
    if (v.st) {
        pk_arena_free(*arena);
        *arena = NULL;
        return v.st;
    }
    if (used && v.frame_end > v.p) { /* the reader goes on after the STOP: from where? */
        pk_arena_free(*arena);
        *arena = NULL;
        return widen_fail(err, WIDEN_EFORMAT, "%s: pickle FRAME runs past its STOP (where torch reads on from would "
                          "depend on its buffering)", what);
    }
    *root = result;
    if (used) *used = (size_t)(v.p - data);
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* The graph: no cycles, bounded depth. Iterative, so that no input can exhaust the stack.          */

widen_status pk_check_graph(pk_arena *a, pk_node *root, uint32_t max_depth, const char *what, widen_error *err)
{
    (void)a;
    typedef struct frame {
        pk_node *n;
        uint32_t next; /* the child to visit next; count: the state */
    } frame;
    frame *stack = NULL;
    size_t sp = 0, cap = 0;
    widen_status st = WIDEN_OK;
    if (grow((void **)&stack, &cap, 1, sizeof *stack)) return widen_fail(err, WIDEN_EIO, "out of memory");
    stack[sp++] = (frame){root, 0};
    root->mark |= 1;
    while (sp && !st) {
        frame *f = &stack[sp - 1];
        pk_node *n = f->n, *child = NULL;
        if (f->next < n->count) child = n->items[f->next];
        else if (f->next == n->count && n->state) child = n->state;
        if (!child) {
            n->mark = (uint8_t)((n->mark & ~1) | 2);
            sp--;
            if (sp) {
                pk_node *parent = stack[sp - 1].n;
                if (n->height + 1 > parent->height) parent->height = n->height + 1;
            }
            continue;
        }
        f->next++;
        if (child->mark & 1) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: pickle holds an object that contains itself (a cycle)", what);
            break;
        }
        if (child->mark & 2) {
            if (child->height + 1 > n->height) n->height = child->height + 1;
        } else {
            if (sp >= max_depth) {
                st = widen_fail(err, WIDEN_EFORMAT, "%s: pickle nests deeper than %u levels", what, max_depth);
                break;
            }
            if (grow((void **)&stack, &cap, sp + 1, sizeof *stack)) {
                st = widen_fail(err, WIDEN_EIO, "out of memory");
                break;
            }
            child->mark |= 1;
            stack[sp++] = (frame){child, 0};
        }
        if (n->height > max_depth) st = widen_fail(err, WIDEN_EFORMAT, "%s: pickle nests deeper than %u levels", what, max_depth);
    }
    free(stack);
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writer: protocol 2, memoizing what Python's pickler memoizes (strings, non-empty tuples, lists,
 * dicts, globals, constructed objects), so that shared objects stay shared. Recursion is bounded by
 * the depth pk_check_graph allows.                                                                  */

typedef struct dumper {
    pk_buffer *b;
    pk_persid_fn persid;
    void *user;
    widen_status st; /* what persid refused with */
} dumper;

static int put(pk_buffer *b, const void *data, size_t len)
{
    if (grow((void **)&b->data, &b->cap, b->len + len, 1)) return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static int put1(pk_buffer *b, unsigned char c)
{
    return put(b, &c, 1);
}

static int put_le(pk_buffer *b, uint64_t x, int n)
{
    unsigned char buf[8];
    for (int i = 0; i < n; i++) buf[i] = (unsigned char)(x >> (8 * i));
    return put(b, buf, (size_t)n);
}

static int memoize(pk_buffer *b, pk_node *n)
{
    n->memo = b->next_memo++;
    if (n->memo < 256) return put1(b, 'q') || put1(b, (unsigned char)n->memo);
    return put1(b, 'r') || put_le(b, (uint64_t)n->memo, 4);
}

static int emit(dumper *d, pk_node *n);

/* Items in batches of at most 1000 (as Python's pickler writes them): MARK ... op. */
static int batched(dumper *d, pk_node **items, size_t count, size_t group, unsigned char op)
{
    for (size_t i = 0; i < count; i += 1000 * group) {
        size_t end = i + 1000 * group < count ? i + 1000 * group : count;
        if (put1(d->b, '(')) return -1;
        for (size_t k = i; k < end; k++)
            if (emit(d, items[k])) return -1;
        if (put1(d->b, op)) return -1;
    }
    return 0;
}

static int emit_state(dumper *d, pk_node *n)
{
    return n->state && (emit(d, n->state) || put1(d->b, 'b')) ? -1 : 0;
}

static int emit(dumper *d, pk_node *n)
{
    pk_buffer *b = d->b;
    if (n->memo >= 0) {
        if (n->memo < 256) return put1(b, 'h') || put1(b, (unsigned char)n->memo);
        return put1(b, 'j') || put_le(b, (uint64_t)n->memo, 4);
    }
    switch ((pk_kind)n->kind) {
    case PK_NONE: return put1(b, 'N');
    case PK_BOOL: return put1(b, n->i ? 0x88 : 0x89);
    case PK_INT:
        if (n->i >= 0 && n->i <= 0xff) return put1(b, 'K') || put1(b, (unsigned char)n->i);
        if (n->i >= 0 && n->i <= 0xffff) return put1(b, 'M') || put_le(b, (uint64_t)n->i, 2);
        if (n->i >= INT32_MIN && n->i <= INT32_MAX) return put1(b, 'J') || put_le(b, (uint64_t)(uint32_t)n->i, 4);
        {
            int k = 8; /* shortest two's complement */
            while (k > 1 && ((n->i >> (8 * (k - 1) - 1)) == 0 || (n->i >> (8 * (k - 1) - 1)) == -1)) k--;
            return put1(b, 0x8a) || put1(b, (unsigned char)k) || put_le(b, (uint64_t)n->i, k);
        }
    case PK_BIGINT: return put1(b, 0x8a) || put1(b, (unsigned char)n->len) || put(b, n->s, n->len);
    case PK_FLOAT: {
        unsigned char be[8];
        for (int i = 0; i < 8; i++) be[i] = (unsigned char)(n->bits >> (56 - 8 * i));
        return put1(b, 'G') || put(b, be, 8);
    }
    case PK_STR:
        if (n->len > UINT32_MAX) return -1;
        return put1(b, 'X') || put_le(b, n->len, 4) || put(b, n->s, n->len) || memoize(b, n);
    case PK_TUPLE:
        if (n->count == 0) return put1(b, ')');
        if (n->count > 3 && put1(b, '(')) return -1;
        for (uint32_t i = 0; i < n->count; i++)
            if (emit(d, n->items[i])) return -1;
        return put1(b, n->count > 3 ? 't' : (unsigned char)(0x84 + n->count)) || memoize(b, n);
    case PK_LIST:
        return put1(b, ']') || memoize(b, n) || (n->count && batched(d, n->items, n->count, 1, 'e'));
    case PK_DICT:
        return put1(b, '}') || memoize(b, n) || (n->count && batched(d, n->items, n->count, 2, 'u'));
    case PK_SET: return put1(b, 0x8f) || memoize(b, n);
    case PK_GLOBAL: {
        const pk_global_info *g = &pk_globals[n->global];
        return put1(b, 'c') || put(b, g->module, strlen(g->module)) || put1(b, '\n') || put(b, g->name, strlen(g->name)) ||
               put1(b, '\n') || memoize(b, n);
    }
    case PK_REDUCE: case PK_NEWOBJ: {
        if (emit(d, n->items[0]) || emit(d, n->items[1]) || put1(b, n->kind == PK_REDUCE ? 'R' : 0x81) || memoize(b, n))
            return -1;
        pk_node **pairs;
        size_t count = pk_pairs(n, &pairs);
        return (count && batched(d, pairs, 2 * count, 2, 'u')) || emit_state(d, n);
    }
    case PK_PERSID: {
        pk_node *t = d->persid ? d->persid(d->user, n, &d->st) : n->items[0];
        if (!t) return -1;
        return emit(d, t) || put1(b, 'Q');
    }
    }
    return -1;
}

widen_status pk_dump(pk_arena *arena, const pk_node *root, pk_persid_fn persid, void *user, pk_buffer *out,
                     widen_error *err)
{
    pk_clear_marks(arena);
    out->next_memo = 0;
    dumper d = {.b = out, .persid = persid, .user = user};
    if (put1(out, 0x80) || put1(out, 2) || emit(&d, (pk_node *)root) || put1(out, '.')) {
        if (d.st) return d.st;
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    return WIDEN_OK;
}
