/* torch.c: reading torch.save zip checkpoints as torch.load(weights_only=True) reads them: the
 * archive, the restricted unpickling of data.pkl into a graph, every storage a persistent id names,
 * and the tensors found under their dotted paths (model.conv1.weight). The graph is walked once per
 * object: cycles and deep nesting are refused, shared objects are not walked again, and whatever
 * the walk does not model keeps its storages pinned (passed through byte for byte). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libdeflate.h>

#include "../../kernels/kernels.h"
#include "../internal.h"
#include "torch.h"

#define BAD(...) widen_fail(err, WIDEN_EFORMAT, __VA_ARGS__)
#define NOMEM() widen_fail(err, WIDEN_EIO, "out of memory")
/* a precision for %.*s of text that is not NUL-terminated (keys point into the pickle) */
#define SHOWN(len) (int)((len) > 200 ? 200 : (len))
#define BAD_VIEW(what) widen_fail(err, WIDEN_EFORMAT, "%s: tensor '%s': %s ('%.*s')", c->path, name, what, \
                                  SHOWN(sto->key_len), sto->key)

const char *widen_torch_storage_name(widen_dtype dtype)
{
    for (size_t g = 0; pk_globals[g].module; g++)
        if (pk_globals[g].role == PK_ROLE_STORAGE && pk_globals[g].dtype == (int)dtype) return pk_globals[g].name;
    return NULL;
}

const char *widen_torch_dtype_name(widen_dtype dtype)
{
    for (size_t g = 0; pk_globals[g].module; g++)
        if (pk_globals[g].role == PK_ROLE_DTYPE && pk_globals[g].dtype == (int)dtype) return pk_globals[g].name;
    return NULL;
}

/* A storage location torch can restore a storage to (its location tags): cpu, meta, mps, or a device
 * type with an optional index (cuda:0). Others fail torch.load; widen refuses them. */
static int known_location(const pk_node *loc)
{
    /* "meta" is a place torch knows, but its storages hold no data: torch would load what widen cannot
     * read (the record's bytes), so it is not among these */
    static const char *const types[] = {"cpu", "mps", "cuda", "xpu", "hpu", "mtia", "xla", "ipu", NULL};
    size_t n = 0;
    while (n < loc->len && loc->s[n] >= 'a' && loc->s[n] <= 'z') n++;
    int known = 0;
    for (int i = 0; types[i] && !known; i++) known = strlen(types[i]) == n && memcmp(types[i], loc->s, n) == 0;
    if (!known) return 0;
    if (n == loc->len) return 1;
    if (n == 3 && memcmp(loc->s, "cpu", 3) == 0) return 0; /* "cpu:0" is no tag of torch's */
    if (loc->s[n] != ':' || n + 1 == loc->len || loc->len - n > 8) return 0;
    for (size_t i = n + 1; i < loc->len; i++)
        if (loc->s[i] < '0' || loc->s[i] > '9') return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Storages: every persistent id the unpickler ran (torch loads each as it unpickles, reachable or
 * not), in that order: the first reference of a key decides, as in torch; later ones must agree.   */

/* A legacy persistent id whose sixth item is (view key, offset, size): a storage of its own, the
 * elements [offset, offset + size) of its root storage, as torch 1.x made it (torch 1.6 on always
 * writes None). Its tuple becomes the plain one of that storage: ('storage', type, view key,
 * location, size), with an entry for the slice of the root's bytes; what the first reference of a
 * view key says decides, and later ones must say the same. */
static widen_status legacy_view(widen_checkpoint *c, torch_state *ts, pk_node *n, pk_node **tuple, widen_error *err)
{
    pk_node *t = n->items[0];
    const pk_node *view = t->items[5], *root = t->items[2];
    if (view->kind != PK_TUPLE || view->count != 3 || view->items[0]->kind != PK_STR || view->items[1]->kind != PK_INT ||
        view->items[2]->kind != PK_INT || view->items[1]->i < 0 || view->items[2]->i < 0)
        return BAD("%s: a storage view that is not (key, offset, size) with a non-negative offset and size", c->path);
    const pk_node *key = view->items[0];
    uint64_t offset = (uint64_t)view->items[1]->i, size = (uint64_t)view->items[2]->i, numel = (uint64_t)t->items[4]->i;
    if (offset > numel || size > numel - offset)
        return BAD("%s: storage view '%.*s' reaches past the end of storage '%.*s' (torch would cut it short)", c->path,
                   SHOWN(key->len), key->s, SHOWN(root->len), root->s);
    size_t index;
    if (key->len == root->len && memcmp(key->s, root->s, key->len) == 0)
        return BAD("%s: storage view '%.*s' has its root's key", c->path, SHOWN(key->len), key->s);
    if (!widen_table_get(&ts->legacy_keys, root->s, root->len, &index))
        return BAD("%s: storage '%.*s' is not in the file's list of storages (torch would load it uninitialised)", c->path,
                   SHOWN(root->len), root->s);
    const widen_zip_entry *base = &ts->zip.entries[index];
    const pk_global_info *g = pk_global_of(t->items[1]);
    uint64_t bytes;
    if (!g->size || base->crc != (uint32_t)(g - pk_globals) || __builtin_mul_overflow(numel, (uint64_t)g->size, &bytes) ||
        base->size != bytes)
        return BAD("%s: storage '%.*s' is named with two types or sizes", c->path, SHOWN(root->len), root->s);
    pk_node *items[5] = {t->items[0], t->items[1], (pk_node *)key, t->items[3], pk_int(ts->arena, (int64_t)size)};
    pk_node *plain = pk_tuple(ts->arena, items, 5);
    if (!plain || !items[4]) return NOMEM();
    int r = widen_table_put(&ts->legacy_keys, key->s, key->len, ts->zip.count, &index);
    if (r < 0) return NOMEM();
    if (r == 0) { /* seen before: the same slice of the same root, or refused */
        const widen_zip_entry *e = &ts->zip.entries[index];
        if (index < ts->zip.count - ts->legacy_views || e->data_offset != base->data_offset + offset * g->size ||
            e->size != size * g->size)
            return BAD("%s: storage view '%.*s' is named with two roots, offsets or sizes", c->path, SHOWN(key->len), key->s);
    } else {
        widen_zip_entry *e = &ts->zip.entries[ts->zip.count++];
        *e = *base;
        if (!(e->name = strndup(key->s, key->len))) return NOMEM();
        e->data_offset = base->data_offset + offset * g->size;
        e->size = size * g->size;
        ts->legacy_views++;
    }
    n->items[0] = *tuple = plain;
    return WIDEN_OK;
}

/* The record of a storage key: a legacy file's, or the zip entry <prefix>data/<key>. */
static const widen_zip_entry *storage_record(const torch_state *ts, const pk_node *key, widen_status *st, widen_error *err)
{
    size_t index;
    if (ts->legacy) return widen_table_get(&ts->legacy_keys, key->s, key->len, &index) ? &ts->zip.entries[index] : NULL;
    char small[256];
    size_t plen = strlen(ts->prefix), len = plen + 5 + key->len;
    char *name = len < sizeof small ? small : malloc(len + 1);
    if (!name) return *st = NOMEM(), NULL;
    memcpy(name, ts->prefix, plen);
    memcpy(name + plen, "data/", 5);
    memcpy(name + plen + 5, key->s, key->len);
    const widen_zip_entry *e = widen_zip_find(&ts->zip, name, len);
    if (name != small) free(name);
    return e;
}

static widen_status register_storages(widen_checkpoint *c, torch_state *ts, widen_error *err)
{
    size_t nodes = pk_arena_count(ts->arena), cap = 0;
    widen_status st = WIDEN_OK;
    for (size_t id = 0; id < nodes; id++) {
        pk_node *n = pk_arena_node(ts->arena, id);
        if (n->kind != PK_PERSID) continue;
        pk_node *t = n->items[0];
        if (t->count != (ts->legacy ? 6u : 5u))
            return BAD("%s: a persistent id of %u items; torch reads %s", c->path, t->count,
                       ts->legacy ? "('storage', type, key, location, numel, view) in a legacy file"
                                  : "('storage', type, key, location, numel) in a zip checkpoint");
        if (ts->legacy && t->items[5]->kind != PK_NONE && (st = legacy_view(c, ts, n, &t, err))) return st;
        const pk_node *type = t->items[1], *key = t->items[2];
        const pk_global_info *g = pk_global_of(type);
        if (!key->len || memchr(key->s, '\0', key->len))
            return BAD("%s: a storage key is empty or holds a NUL byte", c->path);
        if (!known_location(t->items[3]))
            return BAD("%s: storage '%.*s' has the location '%.*s', which torch.load does not know", c->path,
                       SHOWN(key->len), key->s, SHOWN(t->items[3]->len), t->items[3]->s);
        size_t existing;
        if (widen_table_get(&ts->storage_keys, key->s, key->len, &existing)) {
            const torch_storage *s = &ts->storages[existing];
            if (s->type->global != type->global || s->numel != (uint64_t)t->items[4]->i)
                return BAD("%s: storage '%.*s' is named with two types or sizes (torch.%s of %llu, torch.%s of %llu)", c->path,
                           SHOWN(key->len), key->s, pk_global_of(s->type)->name, (unsigned long long)s->numel, g->name,
                           (unsigned long long)t->items[4]->i);
            n->i = (int64_t)existing;
            continue;
        }
        if (ts->storage_count == cap) {
            cap = cap ? 2 * cap : 64;
            torch_storage *grown = realloc(ts->storages, cap * sizeof *grown);
            if (!grown) return NOMEM();
            ts->storages = grown;
        }
        torch_storage *s = &ts->storages[ts->storage_count];
        memset(s, 0, sizeof *s);
        if (!(s->key = pk_arena_strdup(ts->arena, key->s, key->len))) return NOMEM();
        s->key_len = key->len;
        s->type = type;
        s->esize = g->size;
        s->dtype = g->dtype >= 0 ? (widen_dtype)g->dtype : WIDEN_DTYPE_COUNT;
        s->numel = (uint64_t)t->items[4]->i;
        s->entry = storage_record(ts, key, &st, err);
        if (st) return st;
        if (!s->entry && ts->legacy)
            return BAD("%s: storage '%.*s' is not in the file's list of storages (torch would load it uninitialised)",
                       c->path, SHOWN(key->len), key->s);
        if (!s->entry) return BAD("%s: storage '%.*s' has no record %sdata/%.*s", c->path, SHOWN(key->len), key->s, ts->prefix,
                                  SHOWN(key->len), key->s);
        if (s->entry->method != 0)
            return BAD("%s: storage record '%s' is compressed; torch.save stores records", c->path, s->entry->name);
        if (s->entry->directory)
            return BAD("%s: storage record '%s' is marked a directory, whose bytes torch's reader does not read", c->path,
                       s->entry->name);
        uint64_t bytes;
        if (!s->esize || __builtin_mul_overflow(s->numel, (uint64_t)s->esize, &bytes) || bytes != s->entry->size)
            return BAD("%s: storage '%.*s' declares %llu elements of torch.%s but its record holds %llu bytes", c->path,
                       SHOWN(key->len), key->s, (unsigned long long)s->numel, g->name, (unsigned long long)s->entry->size);
        if (widen_table_put(&ts->storage_keys, s->key, s->key_len, ts->storage_count, NULL) < 0) return NOMEM();
        n->i = (int64_t)ts->storage_count++;
    }
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Named tensors: _rebuild_tensor_v2/v3 calls, inside _rebuild_parameter(_with_state), Parameter(...)
 * or _rebuild_from_type_v2(func, type, args, state) as torch 2 writes them. Anything else holding a
 * storage (sparse, quantized, nested, lazily negated or conjugated views) is not modeled.          */

typedef struct site_info {
    pk_node *args;
    uint8_t path[2 * TORCH_MAX_WRAPPERS + 2];
    uint8_t depth;
    uint8_t v3;
    uint8_t v1; /* _rebuild_tensor(storage, offset, size, stride): torch before 0.4 */
} site_info;

static int is_tuple(const pk_node *n, uint32_t min, uint32_t max)
{
    return n->kind == PK_TUPLE && n->count >= min && n->count <= max;
}

/* 1 if n is a tensor widen models, with the way down to its rebuild arguments. */
static int resolve_site(pk_node *n, site_info *si)
{
    for (int wrappers = 0; wrappers <= TORCH_MAX_WRAPPERS; wrappers++) {
        if (n->kind != PK_REDUCE && n->kind != PK_NEWOBJ) return 0;
        pk_role role = pk_role_of(n);
        pk_node *args = n->items[1];
        if (n->kind == PK_REDUCE && (role == PK_ROLE_REBUILD_V1 || role == PK_ROLE_REBUILD_V2 || role == PK_ROLE_REBUILD_V3)) {
            si->path[si->depth++] = 1;
            si->args = args;
            si->v3 = role == PK_ROLE_REBUILD_V3;
            si->v1 = role == PK_ROLE_REBUILD_V1;
            return 1;
        }
        if (n->kind == PK_REDUCE && role == PK_ROLE_FROM_TYPE_V2) {
            pk_role f = pk_role_of(args->count == 4 ? args->items[0] : NULL), t = pk_role_of(args->count == 4 ? args->items[1] : NULL);
            if (args->count != 4 || (f != PK_ROLE_REBUILD_V2 && f != PK_ROLE_REBUILD_V3) ||
                (t != PK_ROLE_TENSOR_CLASS && t != PK_ROLE_PARAMETER) || args->items[2]->kind != PK_TUPLE)
                return 0;
            si->path[si->depth++] = 1;
            si->path[si->depth++] = 2;
            si->args = args->items[2];
            si->v3 = f == PK_ROLE_REBUILD_V3;
            return 1;
        }
        int param = (n->kind == PK_REDUCE && role == PK_ROLE_REBUILD_PARAMETER && is_tuple(args, 3, 3)) ||
                    (n->kind == PK_REDUCE && role == PK_ROLE_REBUILD_PARAMETER_STATE && is_tuple(args, 4, 4)) ||
                    (n->kind == PK_NEWOBJ && role == PK_ROLE_PARAMETER && is_tuple(args, 1, 2));
        if (!param) return 0;
        si->path[si->depth++] = 1;
        si->path[si->depth++] = 0;
        n = args->items[0];
    }
    return 0;
}

/* The dtype a modeled rebuild call gives its tensor; WIDEN_DTYPE_COUNT when widen cannot name it
 * (the tensor then is not modeled). -1 when the arguments are malformed (torch fails to load them). */
static int rebuild_dtype(const torch_state *ts, const site_info *si)
{
    const pk_node *a = si->args;
    if (si->v1) /* no requires_grad, hooks or metadata */
        return a->count == 4 && a->items[0]->kind == PK_PERSID && a->items[1]->kind == PK_INT && a->items[1]->i >= 0 &&
                       a->items[2]->kind == PK_TUPLE && a->items[3]->kind == PK_TUPLE
                   ? (int)ts->storages[a->items[0]->i].dtype
                   : -1;
    if (a->count < (si->v3 ? 7u : 6u) || a->count > (si->v3 ? 8u : 7u)) return -1;
    if (a->items[0]->kind != PK_PERSID || a->items[1]->kind != PK_INT || a->items[1]->i < 0 ||
        a->items[2]->kind != PK_TUPLE || a->items[3]->kind != PK_TUPLE || a->items[4]->kind != PK_BOOL)
        return -1; /* torch sets requires_grad from the fifth: a bool, or it fails */
    /* the metadata argument, read as torch reads it (`if metadata:`): anything false is none; a dict
     * ({'neg': True} ...) makes a lazily negated or conjugated view, whose bytes are not its values (not
     * modeled); anything else fails torch's set_tensor_metadata */
    const pk_node *meta = a->count == (si->v3 ? 8u : 7u) ? a->items[a->count - 1] : NULL;
    if (meta) {
        int empty = meta->kind == PK_NONE || ((meta->kind == PK_BOOL || meta->kind == PK_INT) && meta->i == 0) ||
                    (meta->kind == PK_FLOAT && (meta->bits << 1) == 0) ||
                    ((meta->kind == PK_STR) && meta->len == 0) ||
                    ((meta->kind == PK_TUPLE || meta->kind == PK_LIST || meta->kind == PK_DICT) && meta->count == 0);
        if (!empty) return meta->kind == PK_DICT ? WIDEN_DTYPE_COUNT : -1;
    }
    if (!si->v3) return (int)ts->storages[a->items[0]->i].dtype;
    const pk_global_info *g = pk_global_of(a->items[6]);
    if (!g || g->role != PK_ROLE_DTYPE) return -1;
    return g->dtype >= 0 ? g->dtype : WIDEN_DTYPE_COUNT;
}

/* ---------------------------------------------------------------------------------------------- */
/* The walk                                                                                         */

enum { SEEN_NAMED = 4, SEEN_OPAQUE = 8 }; /* mark bits of the walk (pk_check_graph uses 1 and 2) */

typedef struct walker {
    widen_checkpoint *ckpt;
    torch_state *ts;
    widen_error *err;
    char *name; /* the current dotted path */
    size_t len, cap;
    widen_table paths; /* every path, tensor or not: two equal ones are refused */
    uint64_t path_bytes;
    size_t tensor_cap;
    pk_walk opaque; /* the opaque walk's stack */
} walker;

/* Everything below n, as torch would load it, but nothing widen names: its storages are pinned. */
static void pin(void *user, pk_node *n)
{
    walker *w = user;
    if (n->kind == PK_PERSID) w->ts->storages[n->i].pinned = 1;
}

static widen_status walk_opaque(walker *w, pk_node *n)
{
    widen_error *err = w->err;
    return pk_mark_below(&w->opaque, n, SEEN_OPAQUE, pin, w) ? NOMEM() : WIDEN_OK;
}

/* Appends ".text" (or "text" at the top) to the current path; returns the old length. */
static widen_status push_name(walker *w, const char *text, size_t len, size_t *old)
{
    widen_error *err = w->err;
    *old = w->len;
    size_t need = w->len + 1 + len + 1;
    if (need > w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 256;
        while (cap < need) cap *= 2;
        char *grown = realloc(w->name, cap);
        if (!grown) return NOMEM();
        w->name = grown;
        w->cap = cap;
    }
    if (w->len) w->name[w->len++] = '.';
    memcpy(w->name + w->len, text, len);
    w->len += len;
    w->name[w->len] = '\0';
    return WIDEN_OK;
}

/* Registers the current path; two equal paths (a key twice, or 'a.b' beside 'a': {'b': ...}, or
 * 1 beside '1') are refused: torch would see two values where widen sees one name. */
static widen_status claim_path(walker *w, const char **stored)
{
    widen_error *err = w->err;
    w->path_bytes += w->len + 1;
    if (w->path_bytes > TORCH_MAX_NAME_BYTES)
        return BAD("%s: the names of this pickle's values exceed %llu MiB together", w->ckpt->path,
                   (unsigned long long)(TORCH_MAX_NAME_BYTES >> 20));
    char *copy = pk_arena_strdup(w->ts->arena, w->name, w->len);
    if (!copy) return NOMEM();
    int r = widen_table_put(&w->paths, copy, w->len, UINT32_MAX, NULL); /* a tensor's index once it is one */
    if (r < 0) return NOMEM();
    if (r == 0)
        return BAD("%s: two values are both named '%s' (a repeated key, or keys that read the same once dotted); "
                   "widen cannot tell them apart", w->ckpt->path, w->name);
    *stored = copy;
    return WIDEN_OK;
}

/* A dict key as a name: str as it is, int (and bool, and integral float, which Python's dicts take
 * for the same key) in decimal. 1: named; 0: a key widen does not name (its value passes through
 * unnamed); or an error for keys Python could merge with a named one in ways widen cannot follow. */
static int key_text(walker *w, const pk_node *k, char *buf, size_t size, const char **text, size_t *len,
                    widen_status *st)
{
    widen_error *err = w->err;
    switch ((pk_kind)k->kind) {
    case PK_STR: {
        const unsigned char *s = (const unsigned char *)k->s;
        for (size_t i = 0; i < k->len; i++) /* strict UTF-8: no NUL, no lone surrogate (ED A0..BF) */
            if (!s[i] || (s[i] == 0xed && i + 1 < k->len && s[i + 1] >= 0xa0)) {
                *st = BAD("%s: a dict key holds a NUL byte or a lone surrogate: widen cannot name its value", w->ckpt->path);
                return -1;
            }
        *text = k->s;
        *len = k->len;
        return 1;
    }
    case PK_INT: case PK_BOOL:
        *len = (size_t)snprintf(buf, size, "%lld", (long long)k->i);
        *text = buf;
        return 1;
    case PK_FLOAT: {
        double d;
        memcpy(&d, &k->bits, sizeof d);
        if (isnan(d)) {
            *st = BAD("%s: a dict key is NaN, which no lookup finds", w->ckpt->path);
            return -1;
        }
        if (d == floor(d) && fabs(d) < 9.2e18) *len = (size_t)snprintf(buf, size, "%lld", (long long)d);
        else if (isinf(d)) *len = (size_t)snprintf(buf, size, "%s", d > 0 ? "inf" : "-inf");
        else if (d == floor(d)) {
            *st = BAD("%s: a dict key is a float too large for widen to name", w->ckpt->path);
            return -1;
        } else *len = (size_t)snprintf(buf, size, "%.17g", d);
        *text = buf;
        return 1;
    }
    case PK_BIGINT:
        *st = BAD("%s: a dict key is an integer beyond 64 bits, which widen does not name", w->ckpt->path);
        return -1;
    case PK_REDUCE: case PK_NEWOBJ: {
        /* a constructed key may equal a str or an int (complex(1, 0) == 1, _codecs.encode('nop', 'rot13')
         * == 'abc'): only those that never do are let through, unnamed */
        const pk_global_info *g = pk_global_of(k->items[0]);
        if (g && ((strcmp(g->module, "torch") == 0 && (strcmp(g->name, "Size") == 0 || strcmp(g->name, "device") == 0)) ||
                  strcmp(g->name, "_get_layout") == 0))
            return 0;
        *st = BAD("%s: a dict key is built by %s.%s, which could equal a named key; widen does not read it", w->ckpt->path,
                  g ? g->module : "?", g ? g->name : "?");
        return -1;
    }
    default: return 0; /* None, tuples, bytes, globals ...: never equal to a str or an int */
    }
}

static widen_status note_other(walker *w, const char *path)
{
    torch_state *ts = w->ts;
    if (ts->other_count < sizeof ts->other_paths / sizeof ts->other_paths[0]) ts->other_paths[ts->other_count] = (char *)path;
    ts->other_count++;
    return WIDEN_OK;
}

static widen_status add_tensor(walker *w, const char *name, pk_node *site, const site_info *si, pk_node *holder,
                               uint32_t slot);

static int dict_like(const pk_node *n)
{
    pk_role r = pk_role_of(n);
    return n->kind == PK_DICT ||
           ((n->kind == PK_REDUCE || n->kind == PK_NEWOBJ) && (r == PK_ROLE_ORDERED_DICT || r == PK_ROLE_COUNTER));
}

static widen_status walk_named(walker *w, pk_node *n, pk_node *holder, uint32_t slot, const char *path);

/* The child at items[slot] of n, under the name n's path + text. */
static widen_status walk_child(walker *w, pk_node *n, uint32_t slot, const char *text, size_t len)
{
    size_t old;
    const char *stored;
    widen_status st = push_name(w, text, len, &old);
    if (!st) st = claim_path(w, &stored);
    if (!st) st = walk_named(w, n->items[slot], n, slot, stored);
    w->len = old;
    if (w->name) w->name[old] = '\0';
    return st;
}

static widen_status walk_named(walker *w, pk_node *n, pk_node *holder, uint32_t slot, const char *path)
{
    site_info si = {0};
    if (resolve_site(n, &si)) return add_tensor(w, path, n, &si, holder, slot);
    widen_status st = WIDEN_OK;
    char buf[48];
    if (dict_like(n) || n->kind == PK_LIST || n->kind == PK_TUPLE) {
        if (n->mark & SEEN_NAMED) return WIDEN_OK; /* reached again through the memo: named once, by its first path */
        n->mark |= SEEN_NAMED;
        if (dict_like(n)) {
            uint32_t first = n->kind == PK_DICT ? 0 : 2;
            for (uint32_t i = first; i + 1 < n->count && !st; i += 2) {
                const char *text;
                size_t len;
                int r = key_text(w, n->items[i], buf, sizeof buf, &text, &len, &st);
                if (r < 0) break;
                if (!(st = walk_opaque(w, n->items[i])))
                    st = r ? walk_child(w, n, i + 1, text, len) : walk_opaque(w, n->items[i + 1]);
            }
            if (!st && n->state) st = walk_opaque(w, n->state);
            return st;
        }
        for (uint32_t i = 0; i < n->count && !st; i++) {
            size_t len = (size_t)snprintf(buf, sizeof buf, "%u", i);
            st = walk_child(w, n, i, buf, len);
        }
        return st;
    }
    if ((st = note_other(w, *path ? path : "(the top-level object)"))) return st;
    return walk_opaque(w, n);
}

/* The view rebuild arguments describe over their storage, elements of `esize` bytes (0: a dtype of
 * no whole byte size, whose bounds torch checks and widen cannot: refused): sizes, strides, the
 * offset, each bound and overflow checked as torch's set_ checks them. Fills t (shape, rank,
 * offset, nbytes) and tt (strides, offset, contiguity, storage) when they are not NULL. */
static widen_status check_view(const widen_checkpoint *c, const torch_state *ts, const pk_node *args, unsigned esize,
                               const char *name, widen_tensor_info *t, torch_tensor *tt, uint64_t *elements,
                               widen_error *err)
{
    widen_tensor_info t0;
    torch_tensor tt0;
    if (!t) t = &t0;
    if (!tt) tt = &tt0;
    const torch_storage *sto = &ts->storages[args->items[0]->i];
    const pk_node *size = args->items[2], *stride = args->items[3];
    if (!esize) return BAD_VIEW("has a dtype of no whole byte size, which widen does not read");
    if (size->count > WIDEN_MAX_RANK || stride->count != size->count)
        return BAD_VIEW("size and stride disagree or its rank is over 16");
    t->rank = (int)size->count;
    uint64_t numel = 1, expect = 1, extent = 0;
    tt->contiguous = 1;
    for (int d = t->rank - 1; d >= 0; d--) {
        const pk_node *sz = size->items[d], *sd = stride->items[d];
        if (sz->kind != PK_INT || sd->kind != PK_INT || sz->i < 0 || sd->i < 0)
            return BAD_VIEW("sizes and strides must be non-negative integers");
        t->shape[d] = (uint64_t)sz->i;
        tt->strides[d] = (uint64_t)sd->i;
        if (t->shape[d] != 1 && (uint64_t)sd->i != expect) tt->contiguous = 0;
        if (__builtin_mul_overflow(expect, t->shape[d], &expect) || __builtin_mul_overflow(numel, t->shape[d], &numel))
            return BAD_VIEW("element count overflows");
        uint64_t reach;
        if (t->shape[d] && (__builtin_mul_overflow(t->shape[d] - 1, (uint64_t)sd->i, &reach) ||
                            __builtin_add_overflow(extent, reach, &extent)))
            return BAD_VIEW("reaches past the end of its storage");
    }
    uint64_t bytes, storage_elements = sto->numel * sto->esize / esize;
    if (__builtin_mul_overflow(numel, (uint64_t)esize, &bytes)) return BAD_VIEW("byte count overflows");
    if (numel == 0) tt->contiguous = 1; /* no bytes: whatever its strides say */
    tt->storage = (size_t)args->items[0]->i;
    tt->storage_offset = (uint64_t)args->items[1]->i;
    if (numel && (tt->storage_offset > storage_elements || extent >= storage_elements - tt->storage_offset))
        return BAD_VIEW("reaches past the end of its storage");
    /* an empty tensor reads nothing: torch accepts any offset for it, and widen points it at its storage */
    t->offset = sto->entry->data_offset + (numel ? tt->storage_offset * esize : 0);
    t->nbytes = tt->contiguous ? bytes : 0;
    *elements = numel;
    return WIDEN_OK;
}

/* The attributes torch sets from a tensor's `state` (_rebuild_from_type_v2,
 * _rebuild_parameter_with_state: setattr for each key) that are the tensor's own: `data` repoints it,
 * `real` writes into its storage, the read-only ones fail the load. A state naming any of them is
 * refused; other names are Python attributes, which pass through. */
static const char *const tensor_attributes[] = {
    "H", "T", "__class__", "__cuda_array_interface__", "__dict__", "__weakref__", "_backward_hooks", "_base", "_cdata",
    "_grad", "_grad_fn", "_has_symbolic_sizes_strides", "_python_dispatch", "_version", "data", "device", "dtype",
    "grad", "grad_fn", "imag", "is_leaf", "is_nested", "is_quantized", "is_sparse", "is_sparse_csr", "itemsize",
    "layout", "mH", "mT", "name", "names", "nbytes", "ndim", "output_nr", "real", "requires_grad", "retains_grad",
    "shape", "volatile", "_post_accumulate_grad_hooks", "grad_dtype", NULL};

static int safe_state_dict(const pk_node *d)
{
    if (d->kind == PK_NONE) return 1;
    if (d->kind != PK_DICT) return 0;
    for (uint32_t i = 0; i + 1 < d->count; i += 2) {
        const pk_node *k = d->items[i];
        if (k->kind != PK_STR) return 0;
        if (k->len >= 3 && memcmp(k->s, "is_", 3) == 0) return 0; /* is_cpu, is_cuda, ...: read-only properties */
        for (int a = 0; tensor_attributes[a]; a++)
            if (strlen(tensor_attributes[a]) == k->len && memcmp(tensor_attributes[a], k->s, k->len) == 0) return 0;
    }
    return 1;
}

/* A state as _set_obj_state takes it: a dict, or (dict, slots dict); None or empty: nothing. */
static int safe_state(const pk_node *state)
{
    if (state->kind == PK_TUPLE) return state->count == 2 && safe_state_dict(state->items[0]) && safe_state_dict(state->items[1]);
    return safe_state_dict(state);
}

/* Torch's floating and complex dtypes (only those can require gradients), by name. */
static int grad_dtype(const pk_global_info *g)
{
    const char *n = g->name;
    return strncmp(n, "float", 5) == 0 || strncmp(n, "bfloat", 6) == 0 || strncmp(n, "complex", 7) == 0 ||
           strncmp(n, "Float", 5) == 0 || strncmp(n, "Double", 6) == 0 || strncmp(n, "Half", 4) == 0 ||
           strncmp(n, "BFloat16", 8) == 0 || strncmp(n, "Complex", 7) == 0;
}

/* torch runs every _rebuild_tensor_v2/v3 call it unpickles, named or not, reached or not: one that
 * fails there fails torch.load, so the file is refused, whatever widen would do with the rest. */
static widen_status check_rebuilds(const widen_checkpoint *c, const torch_state *ts, widen_error *err)
{
    for (size_t id = 0, nodes = pk_arena_count(ts->arena); id < nodes; id++) {
        pk_node *n = pk_arena_node(ts->arena, id);
        pk_role role = n->kind == PK_REDUCE ? pk_role_of(n) : PK_ROLE_OTHER;
        if (role == PK_ROLE_REBUILD_PARAMETER || role == PK_ROLE_REBUILD_PARAMETER_STATE) { /* Parameter(data, requires_grad) */
            const pk_node *a = n->items[1];
            if (a->count != (role == PK_ROLE_REBUILD_PARAMETER ? 3u : 4u) || a->items[1]->kind != PK_BOOL)
                return BAD("%s: a Parameter's rebuild arguments are malformed (torch.load fails on them)", c->path);
            if (role == PK_ROLE_REBUILD_PARAMETER_STATE && !safe_state(a->items[3]))
                return BAD("%s: a Parameter's state sets what torch.load would change the tensor with (data, real, "
                           "grad, ...); widen does not read it", c->path);
            continue;
        }
        if (role == PK_ROLE_FROM_TYPE_V2) {
            const pk_node *a = n->items[1];
            if (a->count != 4 || !safe_state(a->items[3]))
                return BAD("%s: a tensor's state sets what torch.load would change the tensor with (data, real, grad, "
                           "...); widen does not read it", c->path);
            continue;
        }
        if (role != PK_ROLE_REBUILD_V1 && role != PK_ROLE_REBUILD_V2 && role != PK_ROLE_REBUILD_V3) continue;
        site_info si = {.args = n->items[1], .v3 = role == PK_ROLE_REBUILD_V3, .v1 = role == PK_ROLE_REBUILD_V1};
        int dtype = rebuild_dtype(ts, &si);
        if (dtype < 0) return BAD("%s: a tensor's rebuild arguments are malformed (torch.load fails on them)", c->path);
        const pk_node *a = si.args;
        unsigned esize = si.v3 ? pk_global_of(a->items[6])->size : ts->storages[a->items[0]->i].esize;
        if (!si.v1 && a->items[4]->i && !grad_dtype(si.v3 ? pk_global_of(a->items[6]) : pk_global_of(ts->storages[a->items[0]->i].type)))
            return BAD("%s: a tensor that is not floating point requires gradients (torch.load fails on it)", c->path);
        uint64_t numel;
        widen_status st = check_view(c, ts, a, esize, "(a tensor torch rebuilds)", NULL, NULL, &numel, err);
        if (st) return st;
    }
    return WIDEN_OK;
}

static widen_status add_tensor(walker *w, const char *name, pk_node *site, const site_info *si, pk_node *holder,
                               uint32_t slot)
{
    widen_error *err = w->err;
    widen_checkpoint *c = w->ckpt;
    torch_state *ts = w->ts;
    /* what the site holds besides the way down (hooks, requires_grad, state, type) is walked as an
     * opaque value; the rebuild arguments but the storage too */
    pk_node *n = site;
    for (uint8_t d = 0; d < si->depth; d++) {
        for (uint32_t i = 0; i < n->count; i++)
            if (i != si->path[d]) {
                widen_status st = walk_opaque(w, n->items[i]);
                if (st) return st;
            }
        n = n->items[si->path[d]];
    }
    const pk_node *args = si->args;
    int dtype = rebuild_dtype(ts, si);
    if (dtype < 0) return BAD("%s: tensor '%s': malformed rebuild arguments", c->path, name);
    for (uint32_t i = 1; i < args->count; i++) {
        widen_status st = walk_opaque(w, args->items[i]);
        if (st) return st;
    }
    torch_storage *sto = &ts->storages[args->items[0]->i];
    if (dtype == WIDEN_DTYPE_COUNT) { /* a tensor widen does not read: its storage passes through */
        widen_status st = note_other(w, name);
        sto->pinned = 1;
        return st;
    }
    if (c->count == w->tensor_cap) {
        size_t cap = w->tensor_cap ? 2 * w->tensor_cap : 64;
        widen_tensor_info *t = realloc(c->tensors, cap * sizeof *t);
        if (t) c->tensors = t;
        torch_tensor *tt = realloc(ts->tensors, cap * sizeof *tt);
        if (tt) ts->tensors = tt;
        if (!t || !tt) return NOMEM();
        w->tensor_cap = cap;
    }
    widen_tensor_info *t = &c->tensors[c->count];
    torch_tensor *tt = &ts->tensors[c->count];
    memset(t, 0, sizeof *t);
    memset(tt, 0, sizeof *tt);
    unsigned esize = widen_dtype_bits((widen_dtype)dtype) / 8;
    t->dtype = (widen_dtype)dtype;
    uint64_t numel, bytes;
    widen_status st = check_view(c, ts, args, esize, name, t, tt, &numel, err);
    if (st) return st;
    bytes = numel * esize;
    tt->site = site;
    tt->holder = holder;
    tt->slot = slot;
    memcpy(tt->path, si->path, sizeof tt->path);
    tt->depth = si->depth;
    tt->v3 = si->v3;
    tt->args = si->args;
    if (si->v3) sto->v3_viewed = 1;
    w->path_bytes += sto->key_len; /* listings repeat the storage key with each name */
    if (w->path_bytes > TORCH_MAX_NAME_BYTES)
        return BAD("%s: the names of this pickle's values exceed %llu MiB together", c->path,
                   (unsigned long long)(TORCH_MAX_NAME_BYTES >> 20));
    t->name = name; /* the claimed path, in the arena */
    widen_table_update(&w->paths, name, strlen(name), c->count);
    c->count++;
    if (__builtin_add_overflow(c->logical_bytes, bytes, &c->logical_bytes)) c->logical_bytes = UINT64_MAX;
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */

void widen_torch_free(void *state)
{
    torch_state *ts = state;
    if (!ts) return;
    widen_zip_free(&ts->zip);
    widen_table_free(&ts->legacy_keys);
    pk_arena_free(ts->arena);
    free(ts->storages);
    widen_table_free(&ts->storage_keys);
    free(ts->tensors);
    free(ts->prefix);
    free(ts);
}

static const widen_zip_entry *record(const torch_state *ts, const char *name)
{
    size_t plen = strlen(ts->prefix), nlen = strlen(name);
    char *full = malloc(plen + nlen + 1); /* the prefix is the input's: any length */
    if (!full) return NULL;
    memcpy(full, ts->prefix, plen);
    memcpy(full + plen, name, nlen + 1);
    const widen_zip_entry *e = widen_zip_find(&ts->zip, full, plen + nlen);
    free(full);
    return e;
}

/* What torch's reader checks of the archive before the pickle: one top folder for every entry
 * (from the first entry of the central directory), a version record it can read, a byteorder it
 * knows. TorchScript archives and NumPy .npz files are named. */
static widen_status check_archive(widen_checkpoint *c, torch_state *ts, widen_error *err)
{
    if (ts->zip.count == 0) return BAD("%s: an empty zip archive, not a PyTorch checkpoint", c->path);
    const char *first = ts->zip.entries[0].name, *slash = strchr(first, '/');
    int npy = 0;
    for (size_t i = 0; i < ts->zip.count; i++) {
        size_t len = strlen(ts->zip.entries[i].name);
        npy += len > 4 && strcmp(ts->zip.entries[i].name + len - 4, ".npy") == 0;
    }
    if (!slash) {
        if (npy) return BAD("%s: a NumPy .npz archive, which widen does not read yet", c->path);
        return BAD("%s: zip archive whose first entry '%s' is not in a folder: not a PyTorch checkpoint", c->path, first);
    }
    size_t plen = (size_t)(slash - first + 1);
    if (!(ts->prefix = strndup(first, plen))) return NOMEM();
    for (size_t i = 0; i < ts->zip.count; i++) {
        const char *name = ts->zip.entries[i].name;
        if (strncmp(name, ts->prefix, plen) != 0)
            return BAD("%s: zip entry '%s' is not in the archive's folder '%s' (torch.load refuses such archives)", c->path,
                       name, ts->prefix);
        if (strcmp(name + plen, "constants.pkl") == 0)
            return BAD("%s: a TorchScript archive (torch.jit.save), which widen does not read: load it with torch.jit.load "
                       "and torch.save its state_dict()", c->path);
    }
    const widen_zip_entry *pkl = record(ts, "data.pkl");
    if (!pkl) {
        if (npy) return BAD("%s: a NumPy .npz archive, which widen does not read yet", c->path);
        return BAD("%s: zip archive without %sdata.pkl: not a PyTorch checkpoint", c->path, ts->prefix);
    }
    const char *read[] = {"data.pkl", ".data/version", "version", "byteorder"};
    for (size_t i = 0; i < sizeof read / sizeof read[0]; i++) {
        const widen_zip_entry *e = record(ts, read[i]);
        if (e && e->directory)
            return BAD("%s: record '%s' is marked a directory, whose bytes torch's reader does not read", c->path, e->name);
    }
    for (size_t i = 0; i < ts->zip.count; i++)
        if (ts->zip.entries[i].method != 0)
            return BAD("%s: zip entry '%s' is compressed (method %u); torch.save stores every record", c->path,
                       ts->zip.entries[i].name, ts->zip.entries[i].method);
    const widen_zip_entry *version = record(ts, ".data/version");
    if (!version) version = record(ts, "version");
    if (!version) return BAD("%s: the archive has no version record, which torch.load requires", c->path);
    /* read as std::stoull reads it: leading white space, then digits */
    const unsigned char *v = c->map + version->data_offset, *end = v + version->size;
    while (v < end && (*v == ' ' || (*v >= '\t' && *v <= '\r'))) v++;
    unsigned long long number = 0;
    int digits = 0;
    while (v < end && *v >= '0' && *v <= '9' && number < 1000) number = number * 10 + (unsigned)(*v++ - '0'), digits++;
    if (!digits || number < 1 || number > 10)
        return BAD("%s: the archive's version record is not a version torch reads (1 to 10)", c->path);
    const widen_zip_entry *order = record(ts, "byteorder");
    if (order && order->size == 3 && memcmp(c->map + order->data_offset, "big", 3) == 0)
        return BAD("%s: a big-endian PyTorch checkpoint (byteorder record), which widen does not read yet", c->path);
    if (order && !(order->size == 6 && memcmp(c->map + order->data_offset, "little", 6) == 0))
        return BAD("%s: the byteorder record is neither 'little' nor 'big'", c->path);
    /* torch does not check CRCs; widen checks the pickle's where it is given, to name a damaged file */
    if (pkl->crc && libdeflate_crc32(0, c->map + pkl->data_offset, (size_t)pkl->size) != pkl->crc)
        return BAD("%s: %sdata.pkl fails its CRC-32 check (a damaged file)", c->path, ts->prefix);
    return WIDEN_OK;
}

widen_status widen_torch_read(widen_checkpoint *c, widen_error *err)
{
    torch_state *ts = calloc(1, sizeof *ts);
    if (!ts) return NOMEM();
    c->format_state = ts;
    c->format_free = widen_torch_free;
    widen_mapping file = {c->map, c->size, c->fd};
    widen_status st = widen_zip_read(&file, c->path, &ts->zip, err);
    if (st || (st = check_archive(c, ts, err))) return st;
    const widen_zip_entry *pkl = record(ts, "data.pkl");
    char what[600];
    snprintf(what, sizeof what, "%s: %sdata.pkl", c->path, ts->prefix);
    if ((st = pk_load(c->map + pkl->data_offset, (size_t)pkl->size, what, &ts->arena, &ts->root, NULL, err)) ||
        (st = widen_torch_read_graph(c, ts, what, err)))
        return st;
    /* the records torch reads: the pickle, the storages, the small ones; a rewrite drops the others */
    unsigned char *read = calloc(ts->zip.count + 1, 1);
    if (!read) return NOMEM();
    const char *known[] = {"data.pkl", ".format_version", ".storage_alignment", "byteorder", "version", ".data/version",
                           ".data/serialization_id"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const widen_zip_entry *e = record(ts, known[i]);
        if (e) read[e - ts->zip.entries] = 1;
    }
    for (size_t i = 0; i < ts->storage_count; i++) read[ts->storages[i].entry - ts->zip.entries] = 1;
    for (size_t i = 0; i < ts->zip.count; i++) ts->unread_records += !read[i];
    free(read);
    return WIDEN_OK;
}

widen_status widen_torch_read_graph(widen_checkpoint *c, torch_state *ts, const char *what, widen_error *err)
{
    widen_status st;
    if ((st = pk_check_graph(ts->arena, ts->root, TORCH_MAX_DEPTH, what, err))) return st;
    if ((st = register_storages(c, ts, err))) return st;
    walker w = {.ckpt = c, .ts = ts, .err = err};
    if (resolve_site(ts->root, &(site_info){0})) { /* torch.save(tensor): one tensor, named "tensor" */
        size_t old;
        const char *stored;
        if (!(st = push_name(&w, "tensor", 6, &old)) && !(st = claim_path(&w, &stored)))
            st = walk_named(&w, ts->root, NULL, 0, stored);
    } else {
        st = walk_named(&w, ts->root, NULL, 0, "");
    }
    free(w.name);
    free(w.opaque.stack);
    /* every path is in the table, the tensors' with their index: the checkpoint's name table */
    c->by_name = w.paths;
    return st ? st : check_rebuilds(c, ts, err); /* the named ones first, to name them */
}

const char *widen_tensor_storage(const widen_checkpoint *c, size_t index)
{
    const torch_state *ts = c && strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    return ts && index < c->count ? ts->storages[ts->tensors[index].storage].key : NULL;
}

static void gather_elements(const unsigned char *base, const widen_tensor_info *t, const uint64_t *strides, size_t esize,
                            uint64_t first, uint64_t count, void *out);

/* The element strides of a gathered tensor: a NumPy layout's, or a torch view's. */
static const uint64_t *tensor_strides(const widen_checkpoint *c, size_t index)
{
    if (c->layouts) return c->layouts[index].strides;
    const torch_state *ts = c->format_state;
    return ts->tensors[index].strides;
}

int widen_tensor_strided(const widen_checkpoint *c, size_t index)
{
    if (c && c->layouts && index < c->count) return c->layouts[index].gathered;
    const torch_state *ts = c && strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    return ts && index < c->count && !ts->tensors[index].contiguous;
}

int widen_tensor_castable(const widen_checkpoint *c, size_t index)
{
    const torch_state *ts = strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    if (!ts || !ts->tensors) return 1;
    const torch_tensor *tt = &ts->tensors[index];
    const torch_storage *s = &ts->storages[tt->storage];
    return !tt->v3 && !s->pinned && !s->v3_viewed;
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
    const uint64_t *strides = tensor_strides(c, index);
    const widen_tensor_info *t = &c->tensors[index];
    uint64_t last = 0;
    for (int d = 0; d < t->rank; d++) {
        if (!t->shape[d]) return 0;
        last += (t->shape[d] - 1) * strides[d]; /* inside the storage: the reader checked */
    }
    return (last + 1) * (widen_dtype_bits(t->dtype) / 8);
}

widen_status widen_tensor_check_strided(const widen_checkpoint *c, size_t index, widen_error *err)
{
    (void)index;
    return widen_checkpoint_check_work(c, err);
}

void widen_tensor_gather(const widen_checkpoint *c, size_t index, uint64_t first, uint64_t count, void *out)
{
    if (count == 0) return; /* an empty tensor may have a zero dimension to divide by */
    const uint64_t *strides = tensor_strides(c, index);
    const widen_tensor_info *t = &c->tensors[index];
    size_t esize = widen_dtype_bits(t->dtype) / 8;
    const widen_layout *l = c->layouts ? &c->layouts[index] : NULL;
    if (l && l->row_major) { /* a run of bytes, then swapped */
        memcpy(out, c->map + t->offset + first * esize, (size_t)(count * esize));
    } else {
        gather_elements(c->map + t->offset, t, strides, esize, first, count, out);
    }
    if (l && l->swap > 1) {
        unsigned char *b = out;
        for (uint64_t i = 0, n = count * esize / l->swap; i < n; i++, b += l->swap)
            for (unsigned k = 0; k < l->swap / 2u; k++) {
                unsigned char x = b[k];
                b[k] = b[l->swap - 1 - k];
                b[l->swap - 1 - k] = x;
            }
    }
}

/* Elements [first, first + count) of a strided tensor whose elements start at `base`. */
static void gather_elements(const unsigned char *base, const widen_tensor_info *t, const uint64_t *strides, size_t esize,
                            uint64_t first, uint64_t count, void *out)
{
    uint64_t at[WIDEN_MAX_RANK] = {0}, element = 0, rest = first;
    for (int d = t->rank - 1; d >= 0; d--) { /* the index of element `first`, and its storage element */
        at[d] = rest % t->shape[d];
        rest /= t->shape[d];
        element += at[d] * strides[d];
    }
    unsigned char *dst = out;
    for (uint64_t n = 0; n < count; n++, dst += esize) {
        /* the reader checked that every index stays inside the storage */
        memcpy(dst, base + element * esize, esize);
        for (int d = t->rank - 1; d >= 0; d--) { /* the next index, last dimension fastest */
            if (++at[d] < t->shape[d]) {
                element += strides[d];
                break;
            }
            element -= (at[d] - 1) * strides[d];
            at[d] = 0;
        }
    }
}

widen_status widen_tensor_hash_strided(const widen_checkpoint *c, size_t index, widen_hash128 *out,
                                       widen_progress_fn progress, void *progress_user, widen_error *err)
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
        return NOMEM();
    }
    k->hash_reset(state);
    uint64_t numel = widen_tensor_elements(c, index), per = BUFFER / esize, step = (8u << 20) / esize;
    st = WIDEN_OK;
    for (uint64_t n = 0; n < numel && !st; n += per) {
        uint64_t count = numel - n < per ? numel - n : per;
        widen_tensor_gather(c, index, n, count, buffer);
        k->hash_update(state, buffer, (size_t)(count * esize));
        if (progress && ((n + count) % step < count || n + count == numel) &&
            progress(progress_user, (n + count) * esize, numel * esize))
            st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", c->path);
    }
    if (!st) *out = k->hash_digest(state);
    free(buffer);
    free(state);
    return st;
}

void widen_torch_conversion_notes(const widen_checkpoint *c, const char *to,
                                  void (*warning)(void *user, const char *message), void *user)
{
    const torch_state *ts = strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    if (!ts || !ts->tensors || !warning) return;
    char line[1024];
    if (ts->other_count) {
        size_t used = (size_t)snprintf(line, sizeof line, "%s: %s holds only tensors widen reads: dropping %zu "
                                       "other value%s (", c->path, to, ts->other_count, ts->other_count == 1 ? "" : "s");
        size_t shown = ts->other_count < 8 ? ts->other_count : 8;
        for (size_t i = 0; i < shown && used < sizeof line - 80; i++)
            used += (size_t)snprintf(line + used, sizeof line - used, "%s%s", i ? ", " : "", ts->other_paths[i]);
        if (used < sizeof line - 8) snprintf(line + used, sizeof line - used, "%s)", ts->other_count > shown ? ", ..." : "");
        widen_escape(line, sizeof line);
        warning(user, line);
    }
    size_t *users = calloc(ts->storage_count + 1, sizeof *users), shared = 0;
    if (!users) return;
    for (size_t i = 0; i < c->count; i++) users[ts->tensors[i].storage]++;
    for (size_t i = 0; i < c->count; i++) shared += users[ts->tensors[i].storage] > 1;
    free(users);
    if (shared) {
        snprintf(line, sizeof line, "%s: %zu tensors share storages (views or tied weights); %s cannot alias, so "
                 "each is written as its own copy", c->path, shared, to);
        widen_escape(line, sizeof line);
        warning(user, line);
    }
}

void widen_torch_notes(const widen_checkpoint *c, const widen_transform *tr, void (*warning)(void *user, const char *message),
                       void *user)
{
    const torch_state *ts = strcmp(c->format, "pt") == 0 ? c->format_state : NULL;
    if (!ts || !ts->tensors || !warning) return;
    char line[600];
    if (ts->unread_records) {
        snprintf(line, sizeof line, "%s: dropping %zu archive entr%s that torch.load does not read", c->path,
                 ts->unread_records, ts->unread_records == 1 ? "y" : "ies");
        widen_escape(line, sizeof line);
        warning(user, line);
    }
    size_t kept = 0;
    for (size_t i = 0; tr->cast && i < ts->storage_count; i++) {
        const torch_storage *s = &ts->storages[i];
        kept += widen_dtype_is_computable(s->dtype) && s->dtype != tr->cast_to && (s->pinned || s->v3_viewed);
    }
    if (kept) {
        snprintf(line, sizeof line, "%s: the cast leaves %zu storage%s as %s: values widen does not model (sparse, "
                 "quantized, _rebuild_tensor_v3 ...) use them", c->path, kept, kept == 1 ? "" : "s",
                 kept == 1 ? "it is" : "they are");
        widen_escape(line, sizeof line);
        warning(user, line);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* A safetensors checkpoint seen as a torch one: the object graph torch.save(state_dict) would pickle
 * (an OrderedDict of rebuild calls, one storage per tensor: _rebuild_tensor_v2 over a typed storage,
 * or, for the dtypes torch >= 2.1 writes so, _rebuild_tensor_v3 over an UntypedStorage), so that it
 * can be written as a .pt file. Dtypes torch has no type for are refused (exit 3).                */

widen_status widen_torch_synthesize(widen_checkpoint *c, widen_error *err)
{
    if (c->format_state) return WIDEN_OK;
    for (size_t i = 0; i < c->count; i++) {
        widen_dtype d = c->tensors[i].dtype;
        if (!widen_torch_storage_name(d) && !widen_torch_dtype_name(d))
            return BAD("%s: tensor '%s' is %s, which a PyTorch checkpoint cannot hold", c->path, c->tensors[i].name,
                       widen_dtype_name(d));
    }
    torch_state *ts = calloc(1, sizeof *ts);
    if (!ts) return NOMEM();
    c->format_state = ts;
    c->format_free = widen_torch_free;
    ts->prefix = strdup("archive/");
    ts->arena = pk_arena_new();
    ts->zip.entries = calloc(c->count + 1, sizeof *ts->zip.entries);
    ts->storages = calloc(c->count + 1, sizeof *ts->storages);
    ts->tensors = calloc(c->count + 1, sizeof *ts->tensors);
    if (!ts->prefix || !ts->arena || !ts->zip.entries || !ts->storages || !ts->tensors) return NOMEM();
    pk_arena *a = ts->arena;
    ts->root = pk_call(a, pk_global(a, "collections", "OrderedDict"), pk_tuple(a, NULL, 0));
    pk_node *storage = pk_str(a, "storage", 7), *cpu = pk_str(a, "cpu", 3), *no = pk_bool(a, 0);
    if (!ts->root || !storage || !cpu || !no) return NOMEM();
    for (size_t i = 0; i < c->count; i++) {
        const widen_tensor_info *t = &c->tensors[i];
        const char *typed = widen_torch_storage_name(t->dtype);
        unsigned esize = widen_dtype_bits(t->dtype) / 8;
        char key[32];
        int klen = snprintf(key, sizeof key, "%zu", i);
        uint64_t numel = t->nbytes / esize, stride = 1;
        pk_node *sizes[WIDEN_MAX_RANK], *strides[WIDEN_MAX_RANK];
        for (int d = t->rank - 1; d >= 0; d--) {
            sizes[d] = pk_int(a, (int64_t)t->shape[d]);
            strides[d] = pk_int(a, (int64_t)stride);
            stride *= t->shape[d] ? t->shape[d] : 1;
        }
        pk_node *type = typed ? pk_global(a, "torch", typed) : pk_global(a, "torch.storage", "UntypedStorage");
        pk_node *pid_items[] = {storage, type, pk_str(a, key, (size_t)klen), cpu,
                                pk_int(a, (int64_t)(typed ? numel : t->nbytes))};
        pk_node *pid = pk_new(a, PK_PERSID), *pid_tuple = pk_tuple(a, pid_items, 5);
        if (!pid || !pid_tuple || pk_append(a, pid, pid_tuple)) return NOMEM();
        pid->i = (int64_t)i;
        pk_node *hooks = pk_call(a, pk_global(a, "collections", "OrderedDict"), pk_tuple(a, NULL, 0));
        pk_node *args_items[] = {pid, pk_int(a, 0), pk_tuple(a, sizes, (size_t)t->rank),
                                 pk_tuple(a, strides, (size_t)t->rank), no, hooks,
                                 typed ? NULL : pk_global(a, "torch", widen_torch_dtype_name(t->dtype))};
        pk_node *args = pk_tuple(a, args_items, typed ? 6 : 7);
        pk_node *call = pk_call(a, typed ? pk_global(a, "torch._utils", "_rebuild_tensor_v2")
                                         : pk_global(a, "torch._utils", "_rebuild_tensor_v3"), args);
        pk_node *name = pk_str(a, t->name, strlen(t->name));
        if (!call || !name || pk_pair_append(a, ts->root, name, call)) return NOMEM();
        widen_zip_entry *e = &ts->zip.entries[ts->zip.count++];
        e->data_offset = t->offset;
        e->size = t->nbytes;
        torch_storage *s = &ts->storages[ts->storage_count++];
        s->key = pid_tuple->items[2]->s;
        s->key_len = (size_t)klen;
        s->type = type;
        s->dtype = typed ? t->dtype : WIDEN_U8;
        s->esize = typed ? esize : 1;
        s->numel = typed ? numel : t->nbytes;
        s->entry = e;
        s->v3_viewed = !typed;
        ts->tensors[i] = (torch_tensor){.site = call, .holder = ts->root, .slot = (uint32_t)(2 + 2 * i + 1),
                                        .path = {1}, .depth = 1, .v3 = !typed, .args = args, .storage = i, .contiguous = 1};
    }
    return WIDEN_OK;
}
