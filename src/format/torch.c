/* torch.c: reading torch.save zip checkpoints: the archive, the restricted unpickling of data.pkl,
 * and the tensors found in the object tree under their dotted paths (model.conv1.weight). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libdeflate.h>

#include "../../kernels/kernels.h"
#include "../internal.h"
#include "torch.h"

#define BAD(...) widen_fail(err, WIDEN_EFORMAT, __VA_ARGS__)

static const struct {
    const char *storage;
    widen_dtype dtype;
} storage_types[] = {
    {"FloatStorage", WIDEN_F32}, {"HalfStorage", WIDEN_F16}, {"BFloat16Storage", WIDEN_BF16},
    {"DoubleStorage", WIDEN_F64}, {"LongStorage", WIDEN_I64}, {"IntStorage", WIDEN_I32},
    {"ShortStorage", WIDEN_I16}, {"CharStorage", WIDEN_I8}, {"ByteStorage", WIDEN_U8},
    {"BoolStorage", WIDEN_BOOL}, {"ComplexFloatStorage", WIDEN_C64},
};

static const struct {
    const char *name;
    widen_dtype dtype;
} torch_dtypes[] = {
    {"float32", WIDEN_F32}, {"float", WIDEN_F32}, {"float16", WIDEN_F16}, {"half", WIDEN_F16},
    {"bfloat16", WIDEN_BF16}, {"float64", WIDEN_F64}, {"double", WIDEN_F64}, {"int64", WIDEN_I64},
    {"long", WIDEN_I64}, {"int32", WIDEN_I32}, {"int", WIDEN_I32}, {"int16", WIDEN_I16}, {"short", WIDEN_I16},
    {"int8", WIDEN_I8}, {"uint8", WIDEN_U8}, {"bool", WIDEN_BOOL}, {"complex64", WIDEN_C64},
    {"float8_e4m3fn", WIDEN_F8_E4M3}, {"float8_e5m2", WIDEN_F8_E5M2}, {"float8_e4m3fnuz", WIDEN_F8_E4M3FNUZ},
    {"float8_e5m2fnuz", WIDEN_F8_E5M2FNUZ}, {"float8_e8m0fnu", WIDEN_F8_E8M0}, {"uint16", WIDEN_U16},
    {"uint32", WIDEN_U32}, {"uint64", WIDEN_U64},
};

const char *widen_torch_storage_name(widen_dtype dtype)
{
    for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++)
        if (storage_types[i].dtype == dtype) return storage_types[i].storage;
    return NULL;
}

typedef struct walker {
    widen_checkpoint *ckpt;
    torch_state *ts;
    widen_error *err;
    size_t cap, other_cap;
} walker;

/* The storage a persistent id names, added to the table on first sight. */
static widen_status storage_of(walker *w, const pk_node *persid, widen_dtype v3_dtype, size_t *index)
{
    widen_error *err = w->err;
    torch_state *ts = w->ts;
    const char *path = w->ckpt->path;
    if (!persid || persid->kind != PK_PERSID) return BAD("%s: a tensor's storage is not a persistent id", path);
    const pk_node *t = persid->items[0];
    if (t->count != 5 || t->items[1]->kind != PK_GLOBAL || t->items[2]->kind != PK_STR || t->items[4]->kind != PK_INT ||
        t->items[4]->i < 0)
        return BAD("%s: storage persistent id is not ('storage', type, key, location, numel)", path);
    const char *key = t->items[2]->s;
    for (size_t i = 0; i < ts->storage_count; i++)
        if (strcmp(ts->storages[i].key, key) == 0) {
            *index = i;
            return WIDEN_OK;
        }
    widen_dtype dtype = WIDEN_DTYPE_COUNT;
    const char *type = t->items[1]->name;
    uint64_t numel = (uint64_t)t->items[4]->i;
    if (strcmp(type, "UntypedStorage") == 0) {
        if (v3_dtype == WIDEN_DTYPE_COUNT) return BAD("%s: storage '%s' is untyped and its tensor names no dtype", path, key);
        dtype = v3_dtype;
        numel /= widen_dtype_bits(dtype) / 8; /* untyped storages count bytes */
    } else {
        for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++)
            if (strcmp(type, storage_types[i].storage) == 0) dtype = storage_types[i].dtype;
        if (dtype == WIDEN_DTYPE_COUNT) return BAD("%s: storage '%s' has type torch.%s, which widen does not read", path, key, type);
    }
    char name[512];
    snprintf(name, sizeof name, "%sdata/%s", ts->prefix, key);
    const widen_zip_entry *e = widen_zip_find(&ts->zip, name);
    if (!e) return BAD("%s: storage '%s' has no record %s", path, key, name);
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, (uint64_t)widen_dtype_bits(dtype) / 8, &bytes) || bytes > e->size)
        return BAD("%s: storage '%s' declares %llu elements but its record holds %llu bytes", path, key,
                   (unsigned long long)numel, (unsigned long long)e->size);
    torch_storage *grown = realloc(ts->storages, (ts->storage_count + 1) * sizeof *grown);
    if (!grown) return widen_fail(err, WIDEN_EIO, "out of memory");
    ts->storages = grown;
    torch_storage *s = &ts->storages[ts->storage_count];
    if (!(s->key = strdup(key))) return widen_fail(err, WIDEN_EIO, "out of memory");
    s->dtype = dtype;
    s->numel = numel;
    s->entry = e;
    s->type = t->items[1];
    *index = ts->storage_count++;
    return WIDEN_OK;
}

/* The _rebuild_tensor_v2/v3 call a node stands for (through _rebuild_parameter), or NULL. */
static pk_node *tensor_call(pk_node *n)
{
    if (!n || n->kind != PK_REDUCE) return NULL;
    const pk_node *f = n->items[0], *args = n->items[1];
    if (pk_is_global(f, "torch._utils", "_rebuild_parameter") || pk_is_global(f, "torch._utils", "_rebuild_parameter_with_state"))
        return args->count ? tensor_call(args->items[0]) : NULL;
    if (pk_is_global(f, "torch._utils", "_rebuild_tensor_v2") || pk_is_global(f, "torch._utils", "_rebuild_tensor_v3"))
        return n;
    return NULL;
}

static widen_status add_tensor(walker *w, const char *name, pk_node *call, pk_node *holder, pk_node **slot)
{
    widen_error *err = w->err;
    widen_checkpoint *c = w->ckpt;
    torch_state *ts = w->ts;
    const pk_node *args = call->items[1];
    int v3 = pk_is_global(call->items[0], "torch._utils", "_rebuild_tensor_v3");
    if (args->count < (v3 ? 7u : 6u) || args->items[1]->kind != PK_INT || args->items[2]->kind != PK_TUPLE ||
        args->items[3]->kind != PK_TUPLE || args->items[1]->i < 0)
        return BAD("%s: tensor '%s': malformed rebuild arguments", c->path, name);
    widen_dtype v3_dtype = WIDEN_DTYPE_COUNT;
    if (v3) {
        const pk_node *d = args->items[6];
        for (size_t i = 0; d->kind == PK_GLOBAL && i < sizeof torch_dtypes / sizeof torch_dtypes[0]; i++)
            if (strcmp(d->s, "torch") == 0 && strcmp(d->name, torch_dtypes[i].name) == 0) v3_dtype = torch_dtypes[i].dtype;
        if (v3_dtype == WIDEN_DTYPE_COUNT) return BAD("%s: tensor '%s' has a dtype widen does not read", c->path, name);
    }
    size_t s = 0;
    widen_status st = storage_of(w, args->items[0], v3_dtype, &s);
    if (st) return st;
    const pk_node *size = args->items[2], *stride = args->items[3];
    if (size->count > WIDEN_MAX_RANK || stride->count != size->count)
        return BAD("%s: tensor '%s': size and stride disagree or rank is over %d", c->path, name, WIDEN_MAX_RANK);
    if (c->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        widen_tensor_info *t = realloc(c->tensors, cap * sizeof *t);
        if (t) c->tensors = t;
        char **nm = realloc(c->names, cap * sizeof *nm);
        if (nm) c->names = nm;
        torch_tensor *tt = realloc(ts->tensors, cap * sizeof *tt);
        if (tt) ts->tensors = tt;
        if (!t || !nm || !tt) return widen_fail(err, WIDEN_EIO, "out of memory");
        w->cap = cap;
    }
    widen_tensor_info *t = &c->tensors[c->count];
    torch_tensor *tt = &ts->tensors[c->count];
    memset(t, 0, sizeof *t);
    const torch_storage *sto = &ts->storages[s];
    unsigned esize = widen_dtype_bits(sto->dtype) / 8;
    t->dtype = sto->dtype;
    t->rank = (int)size->count;
    uint64_t numel = 1, expect = 1, extent = 0;
    tt->contiguous = 1;
    for (int d = t->rank - 1; d >= 0; d--) {
        const pk_node *sz = size->items[d], *sd = stride->items[d];
        if (sz->kind != PK_INT || sd->kind != PK_INT || sz->i < 0 || sd->i < 0)
            return BAD("%s: tensor '%s': sizes and strides must be non-negative integers", c->path, name);
        t->shape[d] = (uint64_t)sz->i;
        tt->strides[d] = (uint64_t)sd->i;
        if (t->shape[d] != 1 && (uint64_t)sd->i != expect) tt->contiguous = 0;
        if (__builtin_mul_overflow(expect, t->shape[d], &expect) || __builtin_mul_overflow(numel, t->shape[d], &numel))
            return BAD("%s: tensor '%s': element count overflows", c->path, name);
        uint64_t reach;
        if (t->shape[d] && (__builtin_mul_overflow(t->shape[d] - 1, (uint64_t)sd->i, &reach) ||
                            __builtin_add_overflow(extent, reach, &extent)))
            return BAD("%s: tensor '%s' reaches past the end of its storage '%s'", c->path, name, sto->key);
    }
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, (uint64_t)esize, &bytes))
        return BAD("%s: tensor '%s': byte count overflows", c->path, name);
    if (numel == 0) tt->contiguous = 1; /* no bytes: whatever its strides say */
    tt->node = call;
    tt->holder = holder;
    tt->slot = slot;
    tt->storage = s;
    tt->storage_offset = (uint64_t)args->items[1]->i;
    if (numel && (tt->storage_offset > sto->numel || extent >= sto->numel - tt->storage_offset))
        return BAD("%s: tensor '%s' reaches past the end of its storage '%s'", c->path, name, sto->key);
    t->offset = sto->entry->data_offset + tt->storage_offset * esize;
    t->nbytes = tt->contiguous ? numel * esize : 0;
    if (!(c->names[c->count] = strdup(name))) return widen_fail(err, WIDEN_EIO, "out of memory");
    t->name = c->names[c->count++];
    return WIDEN_OK;
}

static widen_status note_other(walker *w, const char *path)
{
    torch_state *ts = w->ts;
    if (ts->other_count == w->other_cap) {
        size_t cap = w->other_cap ? 2 * w->other_cap : 16;
        char **grown = realloc(ts->other_paths, cap * sizeof *grown);
        if (!grown) return widen_fail(w->err, WIDEN_EIO, "out of memory");
        ts->other_paths = grown;
        w->other_cap = cap;
    }
    if (!(ts->other_paths[ts->other_count] = strdup(path))) return widen_fail(w->err, WIDEN_EIO, "out of memory");
    ts->other_count++;
    return WIDEN_OK;
}

static int is_dict_like(const pk_node *n)
{
    if (n->kind == PK_DICT) return 1;
    return n->kind == PK_REDUCE && (pk_is_global(n->items[0], "collections", "OrderedDict") ||
                                    pk_is_global(n->items[0], "collections", "Counter"));
}

static widen_status walk(walker *w, pk_node *holder, pk_node **slot, const char *path)
{
    pk_node *n = *slot, *call = tensor_call(n);
    if (call) return add_tensor(w, path, call, holder, slot);
    char child[1024];
    widen_status st = WIDEN_OK;
    if (is_dict_like(n)) {
        for (size_t i = 0; i + 1 < n->kv_count && !st; i += 2) {
            const pk_node *k = n->kv[i];
            char key[64];
            const char *text = k->kind == PK_STR ? k->s : NULL;
            if (k->kind == PK_INT) snprintf(key, sizeof key, "%lld", (long long)k->i), text = key;
            if (!text) continue; /* a key widen cannot name: the value passes through untouched */
            snprintf(child, sizeof child, "%s%s%s", path, *path ? "." : "", text);
            st = walk(w, n, &n->kv[i + 1], child);
        }
        return st;
    }
    if (n->kind == PK_LIST || n->kind == PK_TUPLE) {
        for (size_t i = 0; i < n->count && !st; i++) {
            snprintf(child, sizeof child, "%s%s%zu", path, *path ? "." : "", i);
            st = walk(w, n, &n->items[i], child);
        }
        return st;
    }
    return note_other(w, *path ? path : "(the top-level object)");
}

void widen_torch_free(void *state)
{
    torch_state *ts = state;
    if (!ts) return;
    widen_zip_free(&ts->zip);
    pk_arena_free(ts->arena);
    for (size_t i = 0; i < ts->storage_count; i++) free(ts->storages[i].key);
    free(ts->storages);
    free(ts->tensors);
    for (size_t i = 0; i < ts->other_count; i++) free(ts->other_paths[i]);
    free(ts->other_paths);
    free(ts->prefix);
    free(ts);
}

static void forget_pages(void *user, uint64_t offset, uint64_t len)
{
    widen_release(user, offset, len);
}

widen_status widen_torch_read(widen_checkpoint *c, widen_error *err)
{
    torch_state *ts = calloc(1, sizeof *ts);
    if (!ts) return widen_fail(err, WIDEN_EIO, "out of memory");
    c->format_state = ts;
    c->format_free = widen_torch_free;
    widen_status st = widen_zip_read(c->map, c->size, c->path, &ts->zip, forget_pages, c, err);
    if (st) return st;
    if (ts->zip.count == 0) return BAD("%s: an empty zip archive, not a PyTorch checkpoint", c->path);
    const char *first = ts->zip.entries[0].name, *slash = strchr(first, '/');
    if (!slash) return BAD("%s: zip archive without a top folder, not a PyTorch checkpoint", c->path);
    if (!(ts->prefix = strndup(first, (size_t)(slash - first + 1)))) return widen_fail(err, WIDEN_EIO, "out of memory");
    char name[512];
    snprintf(name, sizeof name, "%sdata.pkl", ts->prefix);
    const widen_zip_entry *pkl = widen_zip_find(&ts->zip, name);
    if (!pkl) {
        snprintf(name, sizeof name, "%s.npy", ts->prefix);
        return BAD("%s: zip archive without %sdata.pkl: not a PyTorch checkpoint (a .npz, which widen does not read "
                   "yet?)", c->path, ts->prefix);
    }
    snprintf(name, sizeof name, "%sbyteorder", ts->prefix);
    const widen_zip_entry *order = widen_zip_find(&ts->zip, name);
    if (order && !(order->size == 6 && memcmp(c->map + order->data_offset, "little", 6) == 0))
        return BAD("%s: a big-endian PyTorch checkpoint (byteorder record), which widen does not read yet", c->path);
    /* CRCs are optional (writers may leave them zero); the pickle's is checked where present */
    if (pkl->crc && libdeflate_crc32(0, c->map + pkl->data_offset, (size_t)pkl->size) != pkl->crc)
        return BAD("%s: %sdata.pkl fails its CRC-32 check (a damaged file)", c->path, ts->prefix);
    char what[600];
    snprintf(what, sizeof what, "%s: %sdata.pkl", c->path, ts->prefix);
    if ((st = pk_load(c->map + pkl->data_offset, (size_t)pkl->size, what, &ts->arena, &ts->root, err))) return st;
    walker w = {.ckpt = c, .ts = ts, .err = err};
    return walk(&w, NULL, &ts->root, "");
}

const char *widen_tensor_storage(const widen_checkpoint *c, size_t index)
{
    const torch_state *ts = strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    return ts && index < c->count ? ts->storages[ts->tensors[index].storage].key : NULL;
}

int widen_tensor_strided(const widen_checkpoint *c, size_t index)
{
    const torch_state *ts = strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    return ts && !ts->tensors[index].contiguous;
}

uint64_t widen_tensor_elements(const widen_checkpoint *c, size_t index)
{
    const widen_tensor_info *t = &c->tensors[index];
    uint64_t numel = 1;
    for (int d = 0; d < t->rank; d++) numel *= t->shape[d]; /* the reader checked for overflow */
    return numel;
}

uint64_t widen_tensor_span(const widen_checkpoint *c, size_t index)
{
    const torch_state *ts = c->format_state;
    const widen_tensor_info *t = &c->tensors[index];
    uint64_t last = 0;
    for (int d = 0; d < t->rank; d++) {
        if (!t->shape[d]) return 0;
        last += (t->shape[d] - 1) * ts->tensors[index].strides[d]; /* inside the storage: the reader checked */
    }
    return (last + 1) * (widen_dtype_bits(t->dtype) / 8);
}

widen_status widen_tensor_check_strided(const widen_checkpoint *c, size_t index, widen_error *err)
{
    const widen_tensor_info *t = &c->tensors[index];
    uint64_t numel = widen_tensor_elements(c, index);
    /* Zero strides let a few bytes stand for any number of elements; a file crafted that way would
     * keep a gather busy for ever, so views larger than 256 times the file are refused. */
    if (numel > c->size / (widen_dtype_bits(t->dtype) / 8) * 256)
        return widen_fail(err, WIDEN_EFORMAT, "%s: tensor '%s' views %llu elements through its strides, over 256 times "
                          "the file's size; widen does not read it", c->path, t->name, (unsigned long long)numel);
    return WIDEN_OK;
}

void widen_tensor_gather(const widen_checkpoint *c, size_t index, uint64_t first, uint64_t count, void *out)
{
    if (count == 0) return; /* an empty tensor may have a zero dimension to divide by */
    const torch_state *ts = c->format_state;
    const torch_tensor *tt = &ts->tensors[index];
    const widen_tensor_info *t = &c->tensors[index];
    size_t esize = widen_dtype_bits(t->dtype) / 8;
    uint64_t at[WIDEN_MAX_RANK] = {0}, element = 0, rest = first;
    for (int d = t->rank - 1; d >= 0; d--) { /* the index of element `first`, and its storage element */
        at[d] = rest % t->shape[d];
        rest /= t->shape[d];
        element += at[d] * tt->strides[d];
    }
    unsigned char *dst = out;
    for (uint64_t n = 0; n < count; n++, dst += esize) {
        /* the reader checked that every index stays inside the storage */
        memcpy(dst, c->map + t->offset + element * esize, esize);
        for (int d = t->rank - 1; d >= 0; d--) { /* the next index, last dimension fastest */
            if (++at[d] < t->shape[d]) {
                element += tt->strides[d];
                break;
            }
            element -= (at[d] - 1) * tt->strides[d];
            at[d] = 0;
        }
    }
}

widen_status widen_tensor_hash_strided(const widen_checkpoint *c, size_t index, widen_hash128 *out, widen_error *err)
{
    widen_status st = widen_tensor_check_strided(c, index, err);
    if (st) return st;
    const widen_kernels *k = widen_kernels_for(widen_isa_active());
    size_t esize = widen_dtype_bits(c->tensors[index].dtype) / 8;
    enum { BUFFER = 64u << 10 };
    unsigned char *buffer = malloc(BUFFER);
    widen_hash_state *state = aligned_alloc(64, sizeof *state);
    if (!buffer || !state) {
        free(buffer);
        free(state);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    k->hash_reset(state);
    uint64_t numel = widen_tensor_elements(c, index), per = BUFFER / esize;
    for (uint64_t n = 0; n < numel; n += per) {
        uint64_t count = numel - n < per ? numel - n : per;
        widen_tensor_gather(c, index, n, count, buffer);
        k->hash_update(state, buffer, (size_t)(count * esize));
    }
    *out = k->hash_digest(state);
    free(buffer);
    free(state);
    return WIDEN_OK;
}

void widen_torch_conversion_notes(const widen_checkpoint *c, void (*warning)(void *user, const char *message),
                                  void *user)
{
    const torch_state *ts = strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    if (!ts || !warning) return;
    char line[1024];
    if (ts->other_count) {
        size_t used = (size_t)snprintf(line, sizeof line, "%s: safetensors holds only tensors: dropping %zu other value%s (",
                                       c->path, ts->other_count, ts->other_count == 1 ? "" : "s");
        for (size_t i = 0; i < ts->other_count && used < sizeof line - 64; i++)
            used += (size_t)snprintf(line + used, sizeof line - used, "%s%s", i ? ", " : "", ts->other_paths[i]);
        snprintf(line + (used < sizeof line - 8 ? used : sizeof line - 8), 8, "%s)",
                 used >= sizeof line - 64 ? ", ..." : "");
        warning(user, line);
    }
    size_t shared = 0;
    for (size_t i = 0; i < c->count; i++)
        for (size_t k = 0; k < c->count; k++)
            if (k != i && ts->tensors[k].storage == ts->tensors[i].storage) {
                shared++;
                break;
            }
    if (shared) {
        snprintf(line, sizeof line, "%s: %zu tensors share storages (views or tied weights); safetensors cannot alias, so "
                 "each is written as its own copy", c->path, shared);
        warning(user, line);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* A safetensors checkpoint seen as a torch one: the object tree torch.save(state_dict) would pickle
 * (an OrderedDict of _rebuild_tensor_v2 calls, one storage per tensor), so that it can be written
 * as a .pt file. */

widen_status widen_torch_synthesize(widen_checkpoint *c, widen_error *err)
{
    if (c->format_state) return WIDEN_OK;
    torch_state *ts = calloc(1, sizeof *ts);
    if (!ts) return widen_fail(err, WIDEN_EIO, "out of memory");
    c->format_state = ts;
    c->format_free = widen_torch_free;
    ts->prefix = strdup("archive/");
    ts->arena = pk_arena_new();
    ts->zip.entries = calloc(c->count + 1, sizeof *ts->zip.entries);
    ts->storages = calloc(c->count + 1, sizeof *ts->storages);
    ts->tensors = calloc(c->count + 1, sizeof *ts->tensors);
    if (!ts->prefix || !ts->arena || !ts->zip.entries || !ts->storages || !ts->tensors)
        return widen_fail(err, WIDEN_EIO, "out of memory");
    pk_arena *a = ts->arena;
    pk_node *empty = pk_tuple(a, NULL, 0);
    ts->root = pk_call(a, pk_global(a, "collections", "OrderedDict"), empty);
    if (!ts->root) return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < c->count; i++) {
        const widen_tensor_info *t = &c->tensors[i];
        const char *type = widen_torch_storage_name(t->dtype);
        if (!type)
            return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' is %s, which has no torch storage type widen writes",
                              c->path, t->name, widen_dtype_name(t->dtype));
        char key[32];
        snprintf(key, sizeof key, "%zu", i);
        uint64_t numel = t->nbytes / (widen_dtype_bits(t->dtype) / 8), stride = 1;
        pk_node *sizes[WIDEN_MAX_RANK], *strides[WIDEN_MAX_RANK];
        for (int d = t->rank - 1; d >= 0; d--) {
            sizes[d] = pk_int(a, (int64_t)t->shape[d]);
            strides[d] = pk_int(a, (int64_t)stride);
            stride *= t->shape[d] ? t->shape[d] : 1;
        }
        pk_node *pid_items[] = {pk_str(a, "storage"), pk_global(a, "torch", type), pk_str(a, key), pk_str(a, "cpu"),
                                pk_int(a, (int64_t)numel)};
        pk_node *pid = pk_new(a, PK_PERSID), *pid_tuple = pk_tuple(a, pid_items, 5);
        if (!pid || !pid_tuple || pk_append(a, pid, pid_tuple)) return widen_fail(err, WIDEN_EIO, "out of memory");
        pk_node *hooks = pk_call(a, pk_global(a, "collections", "OrderedDict"), pk_tuple(a, NULL, 0));
        pk_node *requires_grad = pk_new(a, PK_BOOL);
        pk_node *args_items[] = {pid, pk_int(a, 0), pk_tuple(a, sizes, (size_t)t->rank),
                                 pk_tuple(a, strides, (size_t)t->rank), requires_grad, hooks};
        pk_node *call = pk_call(a, pk_global(a, "torch._utils", "_rebuild_tensor_v2"), pk_tuple(a, args_items, 6));
        pk_node *name = pk_str(a, t->name);
        if (!call || !name || pk_kv_append(ts->root, name, call)) return widen_fail(err, WIDEN_EIO, "out of memory");
        widen_zip_entry *e = &ts->zip.entries[ts->zip.count++];
        e->data_offset = t->offset;
        e->size = t->nbytes;
        torch_storage *s = &ts->storages[ts->storage_count++];
        if (!(s->key = strdup(key))) return widen_fail(err, WIDEN_EIO, "out of memory");
        s->dtype = t->dtype;
        s->numel = numel;
        s->entry = e;
        ts->tensors[i] = (torch_tensor){.node = call, .holder = ts->root, .storage = i, .contiguous = 1};
    }
    for (size_t i = 0; i < c->count; i++) ts->tensors[i].slot = &ts->root->kv[2 * i + 1];
    return WIDEN_OK;
}
