/* pickle.c: a restricted pickle VM and a pickle writer. The VM accepts exactly the opcodes and
 * globals torch.load(weights_only=True) accepts and builds a tree; it calls nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pickle.h"

enum { MAX_DEPTH = 1000, MAX_MEMO = 1 << 24 };

struct pk_arena {
    pk_node **nodes;
    size_t count, cap;
};

static int grow(void **array, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    void *p = realloc(*array, c * size);
    if (!p) return -1;
    *array = p;
    *cap = c;
    return 0;
}

pk_node *pk_new(pk_arena *a, pk_kind kind)
{
    if (grow((void **)&a->nodes, &a->cap, a->count + 1, sizeof *a->nodes)) return NULL;
    pk_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->memo = -1;
    a->nodes[a->count++] = n;
    return n;
}

void pk_arena_free(pk_arena *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->count; i++) {
        free(a->nodes[i]->s);
        free(a->nodes[i]->name);
        free(a->nodes[i]->items);
        free(a->nodes[i]->kv);
        free(a->nodes[i]);
    }
    free(a->nodes);
    free(a);
}

void pk_clear_marks(pk_arena *a)
{
    for (size_t i = 0; i < a->count; i++) a->nodes[i]->memo = -1;
}

int pk_append(pk_arena *a, pk_node *parent, pk_node *child)
{
    (void)a;
    if (grow((void **)&parent->items, &parent->cap, parent->count + 1, sizeof *parent->items)) return -1;
    parent->items[parent->count++] = child;
    return 0;
}

pk_arena *pk_arena_new(void)
{
    return calloc(1, sizeof(pk_arena));
}

int pk_kv_append(pk_node *parent, pk_node *k, pk_node *v)
{
    if (grow((void **)&parent->kv, &parent->kv_cap, parent->kv_count + 2, sizeof *parent->kv)) return -1;
    parent->kv[parent->kv_count++] = k;
    parent->kv[parent->kv_count++] = v;
    return 0;
}

pk_node *pk_str(pk_arena *a, const char *text)
{
    pk_node *n = pk_new(a, PK_STR);
    if (n && (n->s = strdup(text))) n->len = strlen(text);
    return n && n->s ? n : NULL;
}

pk_node *pk_int(pk_arena *a, int64_t v)
{
    pk_node *n = pk_new(a, PK_INT);
    if (n) n->i = v;
    return n;
}

pk_node *pk_global(pk_arena *a, const char *module, const char *name)
{
    pk_node *n = pk_new(a, PK_GLOBAL);
    if (n && (n->s = strdup(module)) && (n->name = strdup(name))) return n;
    return NULL;
}

pk_node *pk_tuple(pk_arena *a, pk_node **items, size_t count)
{
    pk_node *n = pk_new(a, PK_TUPLE);
    for (size_t i = 0; n && i < count; i++)
        if (!items[i] || pk_append(a, n, items[i])) return NULL;
    return n;
}

pk_node *pk_call(pk_arena *a, pk_node *callable, pk_node *args)
{
    pk_node *n = pk_new(a, PK_REDUCE);
    if (!n || !callable || !args || pk_append(a, n, callable) || pk_append(a, n, args)) return NULL;
    return n;
}

int pk_is_global(const pk_node *n, const char *module, const char *name)
{
    return n && n->kind == PK_GLOBAL && strcmp(n->s, module) == 0 && strcmp(n->name, name) == 0;
}

/* The globals torch's weights-only unpickler allows. */
static int allowed_global(const char *mod, const char *name)
{
    static const char *const torch_names[] = {
        "Size", "Tensor", "device", "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64",
        "long", "int32", "int", "int16", "short", "int8", "uint8", "uint16", "uint32", "uint64", "bool", "complex64",
        "complex128", "cfloat", "cdouble", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
        "float8_e8m0fnu", "qint8", "quint8", "qint32", "strided", "sparse_coo", "FloatStorage", "HalfStorage",
        "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage",
        "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage", "UntypedStorage", "FloatTensor", "HalfTensor",
        "BFloat16Tensor", "DoubleTensor", "LongTensor", "IntTensor", "ShortTensor", "CharTensor", "ByteTensor",
        "BoolTensor", NULL};
    if (strcmp(mod, "torch") == 0) {
        for (int i = 0; torch_names[i]; i++)
            if (strcmp(name, torch_names[i]) == 0) return 1;
        return 0;
    }
    if (strcmp(mod, "collections") == 0) return strcmp(name, "OrderedDict") == 0 || strcmp(name, "Counter") == 0;
    if (strcmp(mod, "torch.nn.parameter") == 0) return strcmp(name, "Parameter") == 0;
    if (strcmp(mod, "torch.serialization") == 0) return strcmp(name, "_get_layout") == 0;
    if (strcmp(mod, "_codecs") == 0) return strcmp(name, "encode") == 0;
    if (strcmp(mod, "builtins") == 0) return strcmp(name, "bytearray") == 0 || strcmp(name, "set") == 0;
    if (strcmp(mod, "torch._utils") == 0) return strncmp(name, "_rebuild_", 9) == 0;
    if (strcmp(mod, "torch._tensor") == 0) return strcmp(name, "_rebuild_from_type_v2") == 0;
    return 0;
}

typedef struct vm {
    const unsigned char *p, *end;
    const char *what;
    pk_arena *arena;
    pk_node **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t mp, marks_cap;
    pk_node **memo;
    size_t memo_cap;
    widen_error *err;
    widen_status st;
} vm;

static pk_node *failed(vm *v, widen_status st)
{
    v->st = st;
    return NULL;
}
#define FAIL(...) failed(v, widen_fail(v->err, WIDEN_EFORMAT, __VA_ARGS__))

static int need(vm *v, size_t n, const char *op)
{
    if ((size_t)(v->end - v->p) < n) {
        FAIL("%s: pickle ends inside %s", v->what, op);
        return -1;
    }
    return 0;
}

static int push(vm *v, pk_node *n)
{
    if (!n) {
        if (!v->st) v->st = widen_fail(v->err, WIDEN_EIO, "out of memory");
        return -1;
    }
    if (grow((void **)&v->stack, &v->stack_cap, v->sp + 1, sizeof *v->stack)) {
        v->st = widen_fail(v->err, WIDEN_EIO, "out of memory");
        return -1;
    }
    v->stack[v->sp++] = n;
    return 0;
}

static pk_node *pop(vm *v, const char *op)
{
    size_t floor = v->mp ? v->marks[v->mp - 1] : 0;
    if (v->sp <= floor) return FAIL("%s: pickle opcode %s finds an empty stack", v->what, op);
    return v->stack[--v->sp];
}

static pk_node *top(vm *v, const char *op)
{
    size_t floor = v->mp ? v->marks[v->mp - 1] : 0;
    if (v->sp <= floor) return FAIL("%s: pickle opcode %s finds an empty stack", v->what, op);
    return v->stack[v->sp - 1];
}

/* Pops back to the last MARK; returns the position of the first popped item. */
static int pop_mark(vm *v, const char *op, size_t *from)
{
    if (!v->mp) {
        FAIL("%s: pickle opcode %s without a MARK", v->what, op);
        return -1;
    }
    *from = v->marks[--v->mp];
    return 0;
}

static pk_node *scalar(vm *v, pk_kind kind, int64_t i)
{
    pk_node *n = pk_new(v->arena, kind);
    if (n) n->i = i;
    return n;
}

static pk_node *string(vm *v, size_t len)
{
    pk_node *n = pk_new(v->arena, PK_STR);
    if (!n || !(n->s = malloc(len + 1))) return NULL;
    memcpy(n->s, v->p, len);
    n->s[len] = '\0';
    n->len = len;
    v->p += len;
    return n;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t x = 0;
    for (int i = n - 1; i >= 0; i--) x = x << 8 | p[i];
    return x;
}

static int line(vm *v, char **out)
{
    const unsigned char *nl = memchr(v->p, '\n', (size_t)(v->end - v->p));
    if (!nl) {
        FAIL("%s: pickle GLOBAL without a newline", v->what);
        return -1;
    }
    *out = strndup((const char *)v->p, (size_t)(nl - v->p));
    v->p = nl + 1;
    return *out ? 0 : -1;
}

/* Children deepen their parent; a tree deeper than MAX_DEPTH is refused (the writer and the tree
 * walks recurse). Depth is kept in the otherwise unused memo field during loading. */
static int adopt(vm *v, pk_node *parent, pk_node *child)
{
    long d = child->memo + 1;
    if (d > parent->memo) parent->memo = d;
    if (parent->memo > MAX_DEPTH) {
        FAIL("%s: pickle nests deeper than %d levels", v->what, MAX_DEPTH);
        return -1;
    }
    return 0;
}

static int collect(vm *v, pk_node *parent, size_t from)
{
    for (size_t i = from; i < v->sp; i++)
        if (pk_append(v->arena, parent, v->stack[i]) || adopt(v, parent, v->stack[i])) return -1;
    v->sp = from;
    return 0;
}

static pk_node *make_tuple(vm *v, size_t from)
{
    pk_node *t = pk_new(v->arena, PK_TUPLE);
    if (t) t->memo = 0;
    if (!t || collect(v, t, from)) return NULL;
    return t;
}

static int dict_like(const pk_node *n)
{
    return n->kind == PK_DICT || n->kind == PK_REDUCE || n->kind == PK_NEWOBJ;
}

static int step(vm *v, int *stop, pk_node **result)
{
    unsigned char op = *v->p++;
    pk_node *a, *b, *n;
    size_t from = 0;
    switch (op) {
    case 0x80: /* PROTO */
        if (need(v, 1, "PROTO")) return -1;
        if (*v->p > 5) return FAIL("%s: pickle protocol %u is not supported", v->what, *v->p), -1;
        v->p++;
        return 0;
    case '.': /* STOP */
        if (!(*result = pop(v, "STOP"))) return -1;
        *stop = 1;
        return 0;
    case 'c': { /* GLOBAL */
        char *mod = NULL, *name = NULL;
        if (line(v, &mod) || line(v, &name)) {
            free(mod);
            free(name);
            return -1;
        }
        if (!allowed_global(mod, name)) {
            FAIL("%s: pickle refers to %s.%s, which is not on the allowlist of torch.load(weights_only=True)",
                 v->what, mod, name);
            free(mod);
            free(name);
            return -1;
        }
        n = pk_new(v->arena, PK_GLOBAL);
        if (!n) {
            free(mod);
            free(name);
            return push(v, NULL);
        }
        n->s = mod;
        n->name = name;
        return push(v, n);
    }
    case 'R':    /* REDUCE */
    case 0x81: { /* NEWOBJ */
        const char *opn = op == 'R' ? "REDUCE" : "NEWOBJ";
        if (!(b = pop(v, opn)) || !(a = pop(v, opn))) return -1;
        if (a->kind != PK_GLOBAL) return FAIL("%s: pickle %s on something that is not an allowed global", v->what, opn), -1;
        if (b->kind != PK_TUPLE) return FAIL("%s: pickle %s with arguments that are not a tuple", v->what, opn), -1;
        if (strstr(a->name, "Storage"))
            return FAIL("%s: pickle %s calls %s.%s", v->what, opn, a->s, a->name), -1;
        n = pk_new(v->arena, op == 'R' ? PK_REDUCE : PK_NEWOBJ);
        if (!n || pk_append(v->arena, n, a) || pk_append(v->arena, n, b)) return push(v, NULL);
        n->memo = 0;
        if (adopt(v, n, b)) return -1;
        return push(v, n);
    }
    case 'b': /* BUILD */
        if (!(b = pop(v, "BUILD")) || !(a = top(v, "BUILD"))) return -1;
        if (a->kind != PK_REDUCE && a->kind != PK_NEWOBJ)
            return FAIL("%s: pickle BUILD on an object that is not a constructed one", v->what), -1;
        if (a->state) return FAIL("%s: pickle BUILD twice on one object", v->what), -1;
        a->state = b;
        return adopt(v, a, b);
    case 'a': /* APPEND */
        if (!(b = pop(v, "APPEND")) || !(a = top(v, "APPEND"))) return -1;
        if (a->kind != PK_LIST) return FAIL("%s: pickle APPEND to something that is not a list", v->what), -1;
        return pk_append(v->arena, a, b) ? push(v, NULL) : adopt(v, a, b);
    case 'e': /* APPENDS */
        if (pop_mark(v, "APPENDS", &from)) return -1;
        if (from == 0 || v->stack[from - 1]->kind != PK_LIST)
            return FAIL("%s: pickle APPENDS to something that is not a list", v->what), -1;
        return collect(v, v->stack[from - 1], from);
    case 's': /* SETITEM */
        if (!(b = pop(v, "SETITEM")) || !(a = pop(v, "SETITEM")) || !(n = top(v, "SETITEM"))) return -1;
        if (!dict_like(n)) return FAIL("%s: pickle SETITEM on something that is not a dict", v->what), -1;
        if (pk_kv_append(n, a, b)) return push(v, NULL);
        return adopt(v, n, a) || adopt(v, n, b) ? -1 : 0;
    case 'u': /* SETITEMS */
        if (pop_mark(v, "SETITEMS", &from)) return -1;
        if (from == 0 || !dict_like(v->stack[from - 1]) || (v->sp - from) % 2)
            return FAIL("%s: pickle SETITEMS on something that is not a dict, or with an odd count", v->what), -1;
        n = v->stack[from - 1];
        for (size_t i = from; i < v->sp; i += 2)
            if (pk_kv_append(n, v->stack[i], v->stack[i + 1])) return push(v, NULL);
            else if (adopt(v, n, v->stack[i]) || adopt(v, n, v->stack[i + 1])) return -1;
        v->sp = from;
        return 0;
    case '(': /* MARK */
        if (v->mp >= MAX_DEPTH) return FAIL("%s: pickle nests deeper than %d levels", v->what, MAX_DEPTH), -1;
        if (grow((void **)&v->marks, &v->marks_cap, v->mp + 1, sizeof *v->marks)) return push(v, NULL);
        v->marks[v->mp++] = v->sp;
        return 0;
    case 't': /* TUPLE */
        if (pop_mark(v, "TUPLE", &from)) return -1;
        return push(v, make_tuple(v, from));
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
        size_t k = (size_t)(op - 0x84), floor = v->mp ? v->marks[v->mp - 1] : 0;
        if (v->sp < floor + k) return FAIL("%s: pickle TUPLE%zu finds too few items", v->what, k), -1;
        return push(v, make_tuple(v, v->sp - k));
    }
    case 'N': return push(v, pk_new(v->arena, PK_NONE));
    case 0x88: return push(v, scalar(v, PK_BOOL, 1));
    case 0x89: return push(v, scalar(v, PK_BOOL, 0));
    case ')': return push(v, make_tuple(v, v->sp));
    case ']': return push(v, pk_new(v->arena, PK_LIST));
    case '}': return push(v, pk_new(v->arena, PK_DICT));
    case 0x8f: return push(v, pk_new(v->arena, PK_SET));
    case 'J': if (need(v, 4, "BININT")) return -1;
        n = scalar(v, PK_INT, (int32_t)(uint32_t)le(v->p, 4));
        v->p += 4;
        return push(v, n);
    case 'K': if (need(v, 1, "BININT1")) return -1;
        return push(v, scalar(v, PK_INT, *v->p++));
    case 'M': if (need(v, 2, "BININT2")) return -1;
        n = scalar(v, PK_INT, (int64_t)le(v->p, 2));
        v->p += 2;
        return push(v, n);
    case 0x8a: { /* LONG1 */
        if (need(v, 1, "LONG1")) return -1;
        int k = *v->p++;
        if (k > 8) return FAIL("%s: pickle integer of %d bytes is too large", v->what, k), -1;
        if (need(v, (size_t)k, "LONG1")) return -1;
        uint64_t x = le(v->p, k);
        if (k > 0 && k < 8 && (v->p[k - 1] & 0x80)) x |= ~(uint64_t)0 << (8 * k); /* sign-extend */
        v->p += k;
        return push(v, scalar(v, PK_INT, (int64_t)x));
    }
    case 'G': { /* BINFLOAT, big-endian */
        if (need(v, 8, "BINFLOAT")) return -1;
        uint64_t x = 0;
        for (int i = 0; i < 8; i++) x = x << 8 | v->p[i];
        v->p += 8;
        n = pk_new(v->arena, PK_FLOAT);
        if (n) memcpy(&n->f, &x, 8);
        return push(v, n);
    }
    case 'X': { /* BINUNICODE */
        if (need(v, 4, "BINUNICODE")) return -1;
        size_t len = (size_t)le(v->p, 4);
        v->p += 4;
        if (need(v, len, "BINUNICODE")) return -1;
        return push(v, string(v, len));
    }
    case 'U': { /* SHORT_BINSTRING: read as text, written back as BINUNICODE */
        if (need(v, 1, "SHORT_BINSTRING")) return -1;
        size_t len = *v->p++;
        if (need(v, len, "SHORT_BINSTRING")) return -1;
        return push(v, string(v, len));
    }
    case 'Q': /* BINPERSID */
        if (!(a = pop(v, "BINPERSID"))) return -1;
        if (a->kind != PK_TUPLE || a->count < 1 || a->items[0]->kind != PK_STR || strcmp(a->items[0]->s, "storage"))
            return FAIL("%s: pickle persistent id that is not a ('storage', ...) tuple", v->what), -1;
        n = pk_new(v->arena, PK_PERSID);
        if (!n || pk_append(v->arena, n, a)) return push(v, NULL);
        n->memo = 0;
        if (adopt(v, n, a)) return -1;
        return push(v, n);
    case 'q': case 'r': { /* BINPUT, LONG_BINPUT */
        int k = op == 'q' ? 1 : 4;
        if (need(v, (size_t)k, "BINPUT")) return -1;
        size_t idx = (size_t)le(v->p, k);
        v->p += k;
        if (idx >= MAX_MEMO) return FAIL("%s: pickle memo index %zu is too large", v->what, idx), -1;
        if (!(a = top(v, "BINPUT"))) return -1;
        if (idx >= v->memo_cap) {
            size_t old = v->memo_cap;
            if (grow((void **)&v->memo, &v->memo_cap, idx + 1, sizeof *v->memo)) return push(v, NULL);
            memset(v->memo + old, 0, (v->memo_cap - old) * sizeof *v->memo);
        }
        v->memo[idx] = a;
        return 0;
    }
    case 'h': case 'j': { /* BINGET, LONG_BINGET */
        int k = op == 'h' ? 1 : 4;
        if (need(v, (size_t)k, "BINGET")) return -1;
        size_t idx = (size_t)le(v->p, k);
        v->p += k;
        if (idx >= v->memo_cap || !v->memo[idx])
            return FAIL("%s: pickle BINGET of memo entry %zu, which was never stored", v->what, idx), -1;
        return push(v, v->memo[idx]);
    }
    default:
        if (op >= 0x20 && op < 0x7f)
            return FAIL("%s: pickle opcode '%c' (0x%02x) is not allowed", v->what, op, op), -1;
        return FAIL("%s: pickle opcode 0x%02x is not allowed", v->what, op), -1;
    }
}

widen_status pk_load(const unsigned char *data, size_t len, const char *what, pk_arena **arena, pk_node **root,
                     widen_error *err)
{
    vm v = {.p = data, .end = data + len, .what = what, .err = err};
    *root = NULL;
    *arena = calloc(1, sizeof **arena);
    if (!*arena) return widen_fail(err, WIDEN_EIO, "out of memory");
    v.arena = *arena;
    int stop = 0;
    pk_node *result = NULL;
    while (!stop && !v.st) {
        if (v.p >= v.end) {
            widen_fail(err, WIDEN_EFORMAT, "%s: pickle ends without STOP", what);
            v.st = WIDEN_EFORMAT;
            break;
        }
        if (step(&v, &stop, &result) && !v.st) v.st = widen_fail(err, WIDEN_EIO, "out of memory");
    }
    free(v.stack);
    free(v.marks);
    free(v.memo);
    if (v.st) {
        pk_arena_free(*arena);
        *arena = NULL;
        return v.st;
    }
    pk_clear_marks(*arena); /* the depths are no longer needed */
    *root = result;
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writer                                                                                           */

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

static int memo_put(pk_buffer *b, pk_node *n)
{
    n->memo = b->next_memo++;
    if (n->memo < 256) return put1(b, 'q') || put1(b, (unsigned char)n->memo);
    return put1(b, 'r') || put_le(b, (uint64_t)n->memo, 4);
}

static int emit(pk_buffer *b, pk_node *n);

static int emit_batched(pk_buffer *b, pk_node **items, size_t count, size_t group, unsigned char op)
{
    for (size_t i = 0; i < count; i += 1000 * group) {
        size_t end = i + 1000 * group < count ? i + 1000 * group : count;
        if (put1(b, '(')) return -1;
        for (size_t k = i; k < end; k++)
            if (emit(b, items[k])) return -1;
        if (put1(b, op)) return -1;
    }
    return 0;
}

/* What SETITEMS/APPENDS/BUILD add to an object after its constructor. */
static int emit_contents(pk_buffer *b, pk_node *n, size_t first_item)
{
    if (n->kv_count && emit_batched(b, n->kv, n->kv_count, 2, 'u')) return -1;
    if (n->count > first_item && emit_batched(b, n->items + first_item, n->count - first_item, 1, 'e')) return -1;
    if (n->state && (emit(b, n->state) || put1(b, 'b'))) return -1;
    return 0;
}

static int emit(pk_buffer *b, pk_node *n)
{
    if (n->memo >= 0) {
        if (n->memo < 256) return put1(b, 'h') || put1(b, (unsigned char)n->memo);
        return put1(b, 'j') || put_le(b, (uint64_t)n->memo, 4);
    }
    switch (n->kind) {
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
    case PK_FLOAT: {
        uint64_t x;
        memcpy(&x, &n->f, 8);
        unsigned char be[8];
        for (int i = 0; i < 8; i++) be[i] = (unsigned char)(x >> (56 - 8 * i));
        return put1(b, 'G') || put(b, be, 8);
    }
    case PK_STR: case PK_BYTES:
        if (put1(b, 'X') || put_le(b, n->len, 4) || put(b, n->s, n->len)) return -1;
        return memo_put(b, n);
    case PK_TUPLE:
        if (n->count == 0) return put1(b, ')');
        if (n->count > 3 && put1(b, '(')) return -1;
        for (size_t i = 0; i < n->count; i++)
            if (emit(b, n->items[i])) return -1;
        if (put1(b, n->count > 3 ? 't' : (unsigned char)(0x84 + n->count))) return -1;
        return memo_put(b, n);
    case PK_LIST: return put1(b, ']') || memo_put(b, n) || emit_contents(b, n, 0);
    case PK_DICT: return put1(b, '}') || memo_put(b, n) || emit_contents(b, n, 0);
    case PK_SET: return put1(b, 0x8f) || memo_put(b, n);
    case PK_GLOBAL:
        if (put1(b, 'c') || put(b, n->s, strlen(n->s)) || put1(b, '\n') || put(b, n->name, strlen(n->name)) ||
            put1(b, '\n'))
            return -1;
        return memo_put(b, n);
    case PK_REDUCE: case PK_NEWOBJ:
        if (emit(b, n->items[0]) || emit(b, n->items[1]) || put1(b, n->kind == PK_REDUCE ? 'R' : 0x81)) return -1;
        return memo_put(b, n) || emit_contents(b, n, 2);
    case PK_PERSID: return emit(b, n->items[0]) || put1(b, 'Q');
    }
    return -1;
}

widen_status pk_dump(pk_arena *arena, const pk_node *root, pk_buffer *out, widen_error *err)
{
    pk_clear_marks(arena);
    out->next_memo = 0;
    if (put1(out, 0x80) || put1(out, 2) || emit(out, (pk_node *)root) || put1(out, '.'))
        return widen_fail(err, WIDEN_EIO, "out of memory");
    return WIDEN_OK;
}
