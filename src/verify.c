/* verify.c: proves an output is its input with the recorded transform applied, accounting for every
 * byte of it. Three checks, cheapest first:
 *   1. structure: the output's tensors (as its reader sees them) are the plan's, by name, dtype and
 *      shape, nothing missing or extra; its metadata is the input's; for a .pt output, its object
 *      graph is the input's, object for object (shared objects shared alike), but at the transformed
 *      tensors, and every storage it names is the one the input's graph names there;
 *   2. bytes: the output is written again from the input, through the scalar reference kernels, and
 *      compared byte for byte (headers, pickle, zip records and directory, data), so that whatever
 *      no rule explains is a difference;
 *   3. for a .pt output, each storage record holds the bytes of the input storage the graph says it
 *      stands for.
 * Nothing is executed when the structure already differs, so a hostile output costs no more than
 * reading its headers. */
#include <jansson.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/torch.h"
#include "write.h"
#include "apply.h"

typedef struct verifier {
    widen_checkpoint *in, *out;
    const widen_transform *tr;
    char *provenance; /* what a safetensors output's `widen` key must hold, byte for byte */
    widen_plan plan;
    widen_verify_report *report;
    widen_error *err;
    /* .pt outputs: the graph correspondence */
    pk_node **in_to_out;   /* by input node id */
    pk_node **out_to_in;   /* by output node id */
    long *storage_source;  /* by output storage: the input storage, -1 - plan index (transformed), or -2^62 unset */
    widen_table transformed; /* (holder id, slot) of transformed input tensors -> tensor index */
    uint64_t *slot_keys;
    /* the way down to what is being compared, and where the first difference was found */
    const pk_node *trail[TORCH_MAX_DEPTH + 8];
    uint32_t trail_index[TORCH_MAX_DEPTH + 8];
    size_t depth;
    char where[512];
} verifier;

/* Notes the path of the first difference: the dict keys and list indices on the way down (as the
 * names of tensors are made), as far as they go. */
static int differ(verifier *v)
{
    if (v->where[0]) return 0;
    size_t used = 0;
    for (size_t d = 0; d < v->depth && used < sizeof v->where - 64; d++) {
        const pk_node *n = v->trail[d];
        uint32_t i = v->trail_index[d];
        if (i >= n->count) break; /* a BUILD state */
        int dict = n->kind == PK_DICT || ((n->kind == PK_REDUCE || n->kind == PK_NEWOBJ) && i >= 2 &&
                                           (pk_role_of(n) == PK_ROLE_ORDERED_DICT || pk_role_of(n) == PK_ROLE_COUNTER));
        const pk_node *key = dict && (i - (n->kind == PK_DICT ? 0 : 2)) % 2 ? n->items[i - 1] : NULL;
        if (key && key->kind == PK_STR)
            used += (size_t)snprintf(v->where + used, sizeof v->where - used, "%s%.*s", used ? "." : "",
                                     (int)(key->len > 200 ? 200 : key->len), key->s);
        else if (key && key->kind == PK_INT)
            used += (size_t)snprintf(v->where + used, sizeof v->where - used, "%s%lld", used ? "." : "", (long long)key->i);
        else if (n->kind == PK_LIST || n->kind == PK_TUPLE)
            used += (size_t)snprintf(v->where + used, sizeof v->where - used, "%s%u", used ? "." : "", i);
        else
            break;
    }
    if (!used) snprintf(v->where, sizeof v->where, "(the top-level object)");
    return 0;
}

#define UNSET (-(1L << 62))

#define difference widen_verify_difference

void widen_verify_difference(widen_verify_report *r, const char *fmt, ...)
{
    if (r->differences++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->first, sizeof r->first, fmt, ap);
        va_end(ap);
        widen_escape(r->first, sizeof r->first);
    }
}

/* Where element `e` of a plan item comes from, in words. */
static void describe(const widen_plan_tensor *p, uint64_t e, char *out, size_t size)
{
    if (p->op == WIDEN_OP_COPY) {
        snprintf(out, size, "byte %llu differs from the input", (unsigned long long)(e * (widen_dtype_bits(p->dtype) / 8)));
        return;
    }
    if (p->axis < 0) {
        snprintf(out, size, "element %llu is not the input's element cast from %s to %s", (unsigned long long)e,
                 widen_dtype_name(p->in->dtype), widen_dtype_name(p->dtype));
        return;
    }
    uint64_t inner = p->inner ? p->inner : 1, n = (e / inner) % (p->channels ? p->channels : 1);
    char entry[64];
    widen_map_entry_format(&p->map[n], entry, sizeof entry);
    if (p->map[n].kind == WIDEN_MAP_SOURCE)
        snprintf(out, size, "output channel %llu (axis %d) is not a copy of input channel %s (first at element %llu)",
                 (unsigned long long)n, p->axis, entry, (unsigned long long)e);
    else
        snprintf(out, size, "output channel %llu (axis %d) does not hold the fill %s (first at element %llu)",
                 (unsigned long long)n, p->axis, entry, (unsigned long long)e);
}

static void shape_text(int rank, const uint64_t *shape, char *out, size_t size)
{
    size_t used = (size_t)snprintf(out, size, "[");
    for (int d = 0; d < rank && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, "%s%llu", d ? ", " : "", (unsigned long long)shape[d]);
    if (used < size) snprintf(out + used, size - used, "]");
}

static const char *metadata_get(const widen_checkpoint *c, const char *key)
{
    for (size_t i = 0; i < c->metadata_count; i++)
        if (strcmp(c->metadata[i].key, key) == 0) return c->metadata[i].value;
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* 1. Structure                                                                                     */

static void compare_tensors(verifier *v)
{
    widen_verify_report *r = v->report;
    for (size_t i = 0; i < v->plan.count; i++) {
        const widen_plan_tensor *p = &v->plan.tensors[i];
        long k = widen_tensor_find(v->out, p->name);
        if (k < 0) {
            difference(r, "%s: tensor '%s' is missing", v->out->path, p->name);
            continue;
        }
        const widen_tensor_info *t = widen_tensor_at(v->out, (size_t)k);
        if (p->dtype != t->dtype || p->rank != t->rank || memcmp(p->shape, t->shape, sizeof(uint64_t) * (size_t)t->rank)) {
            char want[256], have[256];
            shape_text(p->rank, p->shape, want, sizeof want);
            shape_text(t->rank, t->shape, have, sizeof have);
            difference(r, "%s: tensor '%s' is %s %s, expected %s %s", v->out->path, p->name, widen_dtype_name(t->dtype),
                       have, widen_dtype_name(p->dtype), want);
        }
    }
    for (size_t k = 0; k < v->out->count; k++)
        if (widen_tensor_find(v->in, v->out->tensors[k].name) < 0)
            difference(r, "%s: tensor '%s' is not in the input", v->out->path, v->out->tensors[k].name);
}

/* A safetensors output's metadata: the input's (a safetensors input's keys and values; a torch
 * input's {"format": "pt"}), plus the provenance key, which must record this transform. */
static void compare_metadata(verifier *v)
{
    const widen_checkpoint *in = v->in, *out = v->out;
    widen_verify_report *r = v->report;
    int from_pt = strcmp(in->format, "pt") == 0;
    widen_table keys = {0};
    for (size_t i = 0; i < in->metadata_count; i++)
        widen_table_put(&keys, in->metadata[i].key, strlen(in->metadata[i].key), i, NULL);
    for (size_t i = 0; i < out->metadata_count; i++) {
        const char *k = out->metadata[i].key, *value = out->metadata[i].value;
        size_t at;
        if (strcmp(k, WIDEN_PROVENANCE_KEY) == 0) {
            if (!v->provenance || strcmp(value, v->provenance) != 0)
                difference(r, "%s: metadata key '%s' does not record the transform being verified as widen records it",
                           out->path, k);
        } else if (from_pt) {
            if (strcmp(k, "format") != 0 || strcmp(value, "pt") != 0)
                difference(r, "%s: metadata key '%s' is not in the input", out->path, k);
        } else if (!widen_table_get(&keys, k, strlen(k), &at)) {
            difference(r, "%s: metadata key '%s' is not in the input", out->path, k);
        } else if (strcmp(value, in->metadata[at].value) != 0) {
            difference(r, "%s: metadata key '%s' differs from the input", out->path, k);
        }
    }
    widen_table have = {0}; /* the output's keys (the readers refused repeated ones) */
    for (size_t i = 0; i < out->metadata_count; i++)
        widen_table_put(&have, out->metadata[i].key, strlen(out->metadata[i].key), i, NULL);
    for (size_t i = 0; i < in->metadata_count; i++) {
        const char *k = in->metadata[i].key;
        if (strcmp(k, WIDEN_PROVENANCE_KEY) != 0 && !widen_table_get(&have, k, strlen(k), NULL))
            difference(r, "%s: metadata key '%s' is missing", out->path, k);
    }
    if (from_pt && !widen_table_get(&have, "format", 6, NULL))
        difference(r, "%s: metadata key 'format' is missing", out->path);
    if (!widen_table_get(&have, WIDEN_PROVENANCE_KEY, strlen(WIDEN_PROVENANCE_KEY), NULL))
        difference(r, "%s: metadata key 'widen' is missing", out->path);
    widen_table_free(&have);
    widen_table_free(&keys);
}

/* The storage class a .pt output must give input storage s (the writer casts whole storages). */
static int cast_storage(const verifier *v, const torch_storage *s)
{
    return v->tr->cast && widen_dtype_is_computable(s->dtype) && s->dtype != v->tr->cast_to && !s->pinned && !s->v3_viewed;
}

static int map_storage(verifier *v, const pk_node *out_pid, long source)
{
    long *have = &v->storage_source[out_pid->i];
    if (*have == UNSET) *have = source;
    return *have == source;
}

static int same_node(verifier *v, pk_node *a, pk_node *b);

/* A persistent id of the input against the output's at the same place: the same storage (renumbered),
 * the same class (or the cast's), location and size. */
static int same_persid(verifier *v, const pk_node *a, const pk_node *b)
{
    const torch_state *tin = v->in->format_state;
    const torch_storage *s = &tin->storages[a->i];
    const pk_node *ta = a->items[0], *tb = b->items[0];
    const pk_global_info *ga = pk_global_of(ta->items[1]), *gb = pk_global_of(tb->items[1]);
    if (cast_storage(v, s)) ga = NULL; /* then the class of the cast's dtype */
    int class_ok = ga ? ga == gb
                      : gb && gb->role == PK_ROLE_STORAGE && gb->dtype == (int)v->tr->cast_to;
    return class_ok && ta->items[3]->len == tb->items[3]->len && memcmp(ta->items[3]->s, tb->items[3]->s, ta->items[3]->len) == 0 &&
           ta->items[4]->i == tb->items[4]->i && map_storage(v, b, a->i);
}

/* The output's site of a transformed tensor: the input's wrappers, then rebuild arguments naming a
 * storage of its own, from offset 0, with the plan's shape and contiguous strides, the rest as in the
 * input (a _rebuild_tensor_v3's dtype: the plan's). */
static int transformed_site(verifier *v, size_t index, pk_node *b)
{
    const torch_state *tin = v->in->format_state;
    const torch_tensor *tt = &tin->tensors[index];
    const widen_plan_tensor *p = NULL;
    size_t plan_index = 0;
    for (size_t i = 0; i < v->plan.count; i++)
        if (v->plan.tensors[i].in == &v->in->tensors[index]) p = &v->plan.tensors[i], plan_index = i;
    if (!p) return differ(v);
    pk_node *a = tt->site;
    for (uint8_t d = 0; d < tt->depth; d++) { /* the wrappers: same kind and items, but the way down */
        if (b->kind != a->kind || b->count != a->count || (b->state != NULL) != (a->state != NULL)) return differ(v);
        if (v->out_to_in[b->id]) return differ(v); /* a fresh object, not one of the input's */
        v->out_to_in[b->id] = a;
        for (uint32_t i = 0; i < a->count; i++)
            if (i != tt->path[d] && !same_node(v, a->items[i], b->items[i])) return differ(v);
        a = a->items[tt->path[d]];
        b = b->items[tt->path[d]];
    }
    /* the arguments */
    if (b->kind != PK_TUPLE || b->count != a->count || v->out_to_in[b->id]) return differ(v);
    v->out_to_in[b->id] = a;
    const pk_node *pid = b->items[0], *off = b->items[1], *size = b->items[2], *stride = b->items[3];
    if (pid->kind != PK_PERSID || off->kind != PK_INT || off->i != 0 || size->kind != PK_TUPLE ||
        stride->kind != PK_TUPLE || size->count != (uint32_t)p->rank || stride->count != (uint32_t)p->rank)
        return differ(v);
    uint64_t step = 1;
    for (int d = p->rank - 1; d >= 0; d--) {
        if (size->items[d]->kind != PK_INT || (uint64_t)size->items[d]->i != p->shape[d]) return differ(v);
        if (stride->items[d]->kind != PK_INT || (uint64_t)stride->items[d]->i != step) return differ(v);
        step *= p->shape[d] ? p->shape[d] : 1;
    }
    for (uint32_t i = 4; i < a->count; i++) {
        if (tt->v3 && i == 6) {
            const pk_global_info *g = pk_global_of(b->items[6]);
            if (!g || g->role != PK_ROLE_DTYPE || g->dtype != (int)p->dtype) return differ(v);
        } else if (!same_node(v, a->items[i], b->items[i])) {
            return differ(v);
        }
    }
    /* its storage: one of its own, holding exactly the output's elements */
    const torch_state *tout = v->out->format_state;
    const torch_storage *s = &tout->storages[pid->i];
    return s->numel * s->esize == p->nbytes && map_storage(v, pid, -1 - (long)plan_index);
}

static long transformed_at(verifier *v, const pk_node *holder, uint32_t slot)
{
    uint64_t key[2] = {holder ? holder->id : UINT64_MAX, slot};
    size_t index;
    return v->transformed.mask && widen_table_get(&v->transformed, (const char *)key, sizeof key, &index) ? (long)index : -1;
}

/* Objects whose identity torch keeps (two names of one tensor are one tensor; a list filled through
 * one name is filled under the other): shared in the input, shared alike in the output, and never
 * two made one. Immutable values compare by value (the writer need not share an empty tuple). */
static int has_identity(const pk_node *n)
{
    return n->kind == PK_LIST || n->kind == PK_DICT || n->kind == PK_SET || n->kind == PK_REDUCE || n->kind == PK_NEWOBJ;
}

static int same_node(verifier *v, pk_node *a, pk_node *b)
{
    if (a->kind != b->kind) return differ(v);
    if (has_identity(a)) {
        if (v->in_to_out[a->id]) return v->in_to_out[a->id] == b || differ(v);
        if (v->out_to_in[b->id]) return differ(v); /* two input objects made one */
        v->in_to_out[a->id] = b;
        v->out_to_in[b->id] = a;
    } else if (v->in_to_out[a->id] == b) {
        return 1; /* compared already (each pair once, however many paths lead to it) */
    }
    int same = 1;
    switch ((pk_kind)a->kind) {
    case PK_NONE: break;
    case PK_BOOL: case PK_INT: case PK_FLOAT: same = a->i == b->i; break;
    case PK_STR: case PK_BIGINT: same = a->len == b->len && memcmp(a->s, b->s, a->len) == 0; break;
    case PK_GLOBAL: same = a->global == b->global; break;
    case PK_PERSID: return same_persid(v, a, b) || differ(v); /* not an object of its own: each names a storage */
    default:
        if (a->count != b->count || (a->state != NULL) != (b->state != NULL)) return differ(v);
        v->trail[v->depth] = a;
        v->depth++;
        for (uint32_t i = 0; i < a->count && same; i++) {
            long t = transformed_at(v, a, i);
            v->trail_index[v->depth - 1] = i;
            same = t >= 0 ? transformed_site(v, (size_t)t, b->items[i]) : same_node(v, a->items[i], b->items[i]);
        }
        v->trail_index[v->depth - 1] = a->count;
        if (same && a->state) same = same_node(v, a->state, b->state);
        v->depth--;
    }
    if (!same) return differ(v);
    if (!has_identity(a)) v->in_to_out[a->id] = b;
    return same;
}

static widen_status compare_graphs(verifier *v)
{
    widen_error *err = v->err;
    widen_status st = widen_torch_synthesize(v->in, err); /* a safetensors input: the state dict's graph */
    if (st) return st;
    torch_state *tin = v->in->format_state, *tout = v->out->format_state;
    v->in_to_out = calloc(pk_arena_count(tin->arena) + 1, sizeof *v->in_to_out);
    v->out_to_in = calloc(pk_arena_count(tout->arena) + 1, sizeof *v->out_to_in);
    v->storage_source = malloc((tout->storage_count + 1) * sizeof *v->storage_source);
    v->slot_keys = calloc(2 * v->plan.count + 2, sizeof *v->slot_keys);
    if (!v->in_to_out || !v->out_to_in || !v->storage_source || !v->slot_keys)
        return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < tout->storage_count; i++) v->storage_source[i] = UNSET;
    size_t keys = 0;
    for (size_t i = 0; i < v->plan.count; i++) {
        const widen_plan_tensor *p = &v->plan.tensors[i];
        if (p->axis < 0) continue;
        size_t index = (size_t)(p->in - v->in->tensors);
        const torch_tensor *tt = &tin->tensors[index];
        uint64_t *key = &v->slot_keys[2 * keys++];
        key[0] = tt->holder ? tt->holder->id : UINT64_MAX;
        key[1] = tt->slot;
        if (widen_table_put(&v->transformed, (const char *)key, 2 * sizeof *key, index, NULL) < 0)
            return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    long root = transformed_at(v, NULL, 0);
    int same = root >= 0 ? transformed_site(v, (size_t)root, tout->root) : same_node(v, tin->root, tout->root);
    if (!same)
        difference(v->report, "%s: its pickle differs from the input's object graph with the transform applied, at '%s' "
                   "(a value, an object's sharing, or a storage it names)", v->out->path, v->where);
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* 2. Bytes: the output written again, compared as it is written.                                  */

typedef struct compare_output {
    widen_output base;
    const widen_checkpoint *out;
    uint64_t mismatches[64]; /* the first differing offset of each differing write, up to 64 */
    size_t count;
} compare_output;

static widen_status compare_write(widen_output *o, const void *data, size_t len, widen_error *err)
{
    (void)err;
    compare_output *c = (compare_output *)o;
    uint64_t at = o->position, size = c->out->size;
    size_t have = at >= size ? 0 : (size_t)(size - at < len ? size - at : len);
    const unsigned char *want = data, *got = c->out->map + at;
    if (have && memcmp(got, want, have) != 0) {
        size_t k = 0;
        while (got[k] == want[k]) k++;
        if (c->count < 64) c->mismatches[c->count++] = at + k;
    } else if (have < len && c->count < 64) {
        c->mismatches[c->count++] = at + have; /* the output ends here */
    }
    if (have) widen_release(c->out, at, have);
    o->position += len;
    return WIDEN_OK;
}

/* Bytes whose value comes later (compare_patch compares them then). */
static widen_status compare_reserve(widen_output *o, size_t len, widen_error *err)
{
    (void)err;
    o->position += len;
    return WIDEN_OK;
}

static widen_status compare_patch(widen_output *o, uint64_t at, const void *data, size_t len, widen_error *err)
{
    (void)err;
    compare_output *c = (compare_output *)o;
    const unsigned char *want = data, *got = c->out->map + at;
    size_t have = at >= c->out->size ? 0 : (size_t)(c->out->size - at < len ? c->out->size - at : len);
    size_t k = 0;
    while (k < have && got[k] == want[k]) k++;
    if (k < len && c->count < 64) c->mismatches[c->count++] = at + k;
    return WIDEN_OK;
}

/* The plan item whose bytes lie at output offset `at` of a safetensors output, and where. */
static void explain_safetensors(verifier *v, uint64_t at, char *what, size_t size)
{
    uint64_t n = 0, pos; /* the output's own header length */
    for (int b = 7; b >= 0 && v->out->size >= 8; b--) n = n << 8 | v->out->map[b];
    uint64_t header = 8 + n;
    if (at < header) {
        snprintf(what, size, "its header is not the one widen writes for this transform (first at byte %llu)",
                 (unsigned long long)at);
        return;
    }
    pos = header;
    for (size_t i = 0; i < v->plan.count; i++) {
        const widen_plan_tensor *p = &v->plan.tensors[i];
        if (at < pos + p->nbytes) {
            char detail[512];
            describe(p, (at - pos) / (widen_dtype_bits(p->dtype) / 8), detail, sizeof detail);
            snprintf(what, size, "tensor '%s': %s", p->name, detail);
            return;
        }
        pos += p->nbytes;
    }
    snprintf(what, size, "it has bytes past its last tensor (at byte %llu)", (unsigned long long)at);
}

static void explain_pt(verifier *v, const widen_torch_layout *layout, uint64_t at, char *what, size_t size)
{
    const torch_state *tin = v->in->format_state;
    for (size_t i = 0; i < layout->entry_count; i++) {
        const widen_zip_entry *e = &layout->entries[i];
        uint64_t next = i + 1 < layout->entry_count ? layout->entries[i + 1].header_offset : UINT64_MAX;
        if (at < e->header_offset || at >= next) continue;
        const char *name = e->name + strlen("archive/");
        if (at < e->data_offset) {
            snprintf(what, size, "the zip local header of '%s' differs", e->name);
        } else if (at >= e->data_offset + e->size) {
            snprintf(what, size, "the data descriptor of '%s' differs", e->name);
        } else if (strncmp(name, "data/", 5) == 0) {
            unsigned long key = strtoul(name + 5, NULL, 10);
            long source = key < layout->keys ? layout->source[key] : 0;
            if (source >= 0) {
                const char *viewer = NULL; /* a tensor that views it, to name */
                for (size_t t = 0; t < v->in->count && !viewer; t++)
                    if (tin->tensors[t].storage == (size_t)source) viewer = v->in->tensors[t].name;
                snprintf(what, size, "record '%s' (input storage '%s'%s%s%s) differs at byte %llu", e->name,
                         tin->storages[source].key, viewer ? ", the bytes of tensor '" : "", viewer ? viewer : "",
                         viewer ? "'" : "", (unsigned long long)(at - e->data_offset));
            } else {
                const widen_plan_tensor *p = &v->plan.tensors[-1 - source];
                char detail[512];
                describe(p, (at - e->data_offset) / (widen_dtype_bits(p->dtype) / 8), detail, sizeof detail);
                snprintf(what, size, "tensor '%s': %s", p->name, detail);
            }
        } else {
            snprintf(what, size, "record '%s' differs at byte %llu", e->name, (unsigned long long)(at - e->data_offset));
        }
        return;
    }
    if (layout->entry_count && at < layout->entries[0].header_offset)
        snprintf(what, size, "it does not begin as widen writes it");
    else
        snprintf(what, size, "its zip directory differs from the one widen writes (at byte %llu)", (unsigned long long)at);
}

static void explain_npz(verifier *v, const widen_npz_layout *layout, uint64_t at, char *what, size_t size)
{
    for (size_t i = layout->count; i-- > 0;) {
        const widen_npz_member *m = &layout->members[i];
        const widen_plan_tensor *p = &v->plan.tensors[i];
        if (at < m->header_offset) continue;
        if (at >= m->data_offset + p->nbytes) break; /* past the last member that starts before it */
        if (at < m->npy_offset) {
            snprintf(what, size, "the zip local header of member '%s.npy' differs", p->name);
        } else if (at < m->data_offset) {
            snprintf(what, size, "the .npy header of member '%s.npy' is not the one np.save writes for %s %s", p->name,
                     widen_dtype_name(p->dtype), p->rank ? "of this shape" : "scalar");
        } else {
            char detail[512];
            describe(p, (at - m->data_offset) / (widen_dtype_bits(p->dtype) / 8), detail, sizeof detail);
            snprintf(what, size, "tensor '%s': %s", p->name, detail);
        }
        return;
    }
    if (at >= layout->comment_offset)
        snprintf(what, size, "its archive comment is not the record of this transform widen writes");
    else if (at >= layout->directory_offset)
        snprintf(what, size, "its zip directory differs from the one widen writes (at byte %llu)", (unsigned long long)at);
    else
        snprintf(what, size, "it does not begin as widen writes it");
}

/* 3. Each storage record holds the bytes of the storage the output's graph names there. */
static void check_sources(verifier *v, const widen_torch_layout *layout)
{
    const torch_state *tout = v->out->format_state;
    for (size_t k = 0; k < layout->keys; k++) {
        char key[32];
        size_t index;
        int len = snprintf(key, sizeof key, "%zu", k);
        if (!widen_table_get(&tout->storage_keys, key, (size_t)len, &index)) {
            difference(v->report, "%s: no persistent id names storage record data/%zu", v->out->path, k);
            continue;
        }
        if (v->storage_source[index] != layout->source[k])
            difference(v->report, "%s: storage record data/%zu does not hold the bytes the pickle names there",
                       v->out->path, k);
    }
}

static void check_manifest_hashes(json_t *manifest, const char *path, const widen_plan *plan, widen_verify_report *r)
{
    widen_table names = {0};
    for (size_t k = 0; k < plan->count; k++) widen_table_put(&names, plan->tensors[k].name, strlen(plan->tensors[k].name), k, NULL);
    unsigned char *seen = calloc(plan->count + 1, 1);
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(manifest, "tensors"), i, item) {
        const char *name = json_string_value(json_object_get(item, "name"));
        size_t k;
        if (!name || !widen_table_get(&names, name, strlen(name), &k)) {
            difference(r, "%s: manifest lists tensor '%s', which the input lacks", path, name ? name : "?");
            continue;
        }
        if (seen && seen[k]++) difference(r, "%s: manifest lists tensor '%s' twice", path, name);
        const widen_plan_tensor *p = &plan->tensors[k];
        const char *sides[2] = {"input", "output"};
        const widen_hash128 hashes[2] = {p->in_hash, p->out_hash};
        for (int s = 0; s < 2; s++) {
            char hex[33];
            widen_hash128_hex(hashes[s], hex);
            const char *want = json_string_value(json_object_get(json_object_get(item, sides[s]), "xxh3_128"));
            if (!want || strcmp(want, hex) != 0)
                difference(r, "%s: tensor '%s': the %s's XXH3-128 is %s, the manifest records %s", path, name, sides[s],
                           hex, want ? want : "none");
        }
    }
    for (size_t k = 0; seen && k < plan->count; k++)
        if (!seen[k]) difference(r, "%s: manifest does not list tensor '%s'", path, plan->tensors[k].name);
    free(seen);
    widen_table_free(&names);
}

static json_t *load_manifest(const char *path, widen_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        widen_fail(err, strstr(jerr.text, "unable to open") ? WIDEN_EIO : WIDEN_EFORMAT, "%s: cannot read manifest: %s",
                   path, jerr.text);
        return NULL;
    }
    if (!json_is_object(json_object_get(root, "transform")) || !json_is_array(json_object_get(root, "tensors"))) {
        json_decref(root);
        widen_fail(err, WIDEN_EFORMAT, "%s: not a widen manifest (no transform or tensors)", path);
        return NULL;
    }
    return root;
}

/* The bytes reading tensor `index` back takes: its elements'. */
static uint64_t read_back_bytes(const widen_checkpoint *c, size_t index)
{
    return widen_tensor_strided(c, index) ? widen_tensor_elements(c, index) * widen_dtype_bits(c->tensors[index].dtype) / 8
                                          : c->tensors[index].nbytes;
}

widen_status widen_verify_run(const char *input, const char *output, const widen_transform *tr, const char *provenance,
                              json_t *manifest, const char *manifest_name, const widen_verify_work *work,
                              widen_apply_record *record, widen_verify_report *report, widen_error *err)
{
    verifier v = {.report = report, .err = err, .tr = tr};
    widen_torch_layout layout = {0};
    widen_npz_layout npz_layout = {0};
    size_t before = report->differences;
    widen_status st = widen_isa_init(err);
    /* the tensor lists first: an .npz's inflating waits until the run's total is known (and is not
     * done at all where the transform does not apply) */
    const widen_open_work deferred = {.defer = 1};
    if (st || (st = widen_open_ex(input, &deferred, &v.in, err)) || (st = widen_open_ex(output, &deferred, &v.out, err)))
        goto done;
    if (!(v.provenance = strdup(provenance))) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
        goto done;
    }
    if ((st = widen_plan_build(v.in, tr, &v.plan, err))) {
        if (st != WIDEN_EUSAGE) goto done;
        /* a transform this input cannot have had applied */
        difference(report, "%s: the recorded transform does not apply to %s: %s", output, input, err ? err->message : "");
        st = WIDEN_DIFFERENT;
        goto done;
    }
    for (size_t i = 0; i < v.plan.count; i++) report->transformed += v.plan.tensors[i].op != WIDEN_OP_COPY;
    report->tensors += v.plan.count;
    if (record) widen_apply_record_sizes(record, &v.plan);
    int to_pt = strcmp(v.out->format, "pt") == 0, to_npz = strcmp(v.out->format, "npz") == 0;
    /* progress: what opening the files reads (an .npz's members inflated, read now: the structure's
     * checks below take offsets too), the replay's bytes, then the bytes read back */
    /* (every tensor the output has: which of a .pt's the replay hashes is known only after it, and
     * those it does not are passed over in their turn) */
    uint64_t read_back = 0;
    for (size_t i = 0; i < v.plan.count; i++) {
        long at = widen_tensor_find(v.out, v.plan.tensors[i].name);
        if (at >= 0) read_back += read_back_bytes(v.out, (size_t)at);
    }
    widen_meter meter = {.fn = work ? work->progress : NULL, .user = work ? work->progress_user : NULL,
                         .total = v.in->pending_work + v.out->pending_work + v.plan.data_bytes + read_back};
    widen_checkpoint *const files[2] = {v.in, v.out};
    for (int f = 0; f < 2; f++) {
        widen_meter_next(&meter, files[f]->pending_work);
        if ((st = widen_checkpoint_load(files[f], meter.fn ? widen_meter_progress : NULL, &meter, err))) goto done;
    }
    /* 1. structure */
    compare_tensors(&v);
    if (to_npz) {
        if (report->differences == before && (st = widen_npz_check(v.in, &v.plan, err))) {
            if (st != WIDEN_EUSAGE) goto done;
            difference(report, "%s: the recorded transform's output cannot be an .npz: %s", output, err ? err->message : "");
        }
    } else if (!to_pt) {
        compare_metadata(&v);
    } else if (report->differences == before && (st = compare_graphs(&v))) {
        goto done;
    }
    if (report->differences != before) {
        st = WIDEN_DIFFERENT;
        goto done;
    }
    widen_meter_next(&meter, v.plan.data_bytes);
    /* 2. bytes: written again through the scalar kernels (on any number of threads: the bytes do not
     * depend on it) */
    compare_output cmp = {.base = {.write = compare_write, .reserve = compare_reserve, .patch = compare_patch},
                          .out = v.out};
    widen_exec_options eo = {.threads = work && work->threads ? work->threads : 1, .isa = WIDEN_ISA_SCALAR,
                             .progress = meter.fn ? widen_meter_progress : NULL, .progress_user = &meter};
    if (to_pt) {
        st = widen_torch_write(v.in, tr, &v.plan, &cmp.base, &eo, &layout, err);
        if (!st && manifest) st = widen_torch_hash_views(v.in, &v.plan, &eo, err);
    } else if (to_npz) {
        st = widen_npz_write(v.in, &v.plan, v.provenance, &cmp.base, &eo, &npz_layout, err);
    } else {
        st = widen_safetensors_write(v.in, &v.plan, v.provenance, &cmp.base, &eo, err);
    }
    if (st) {
        if (st == WIDEN_EINTERRUPTED) widen_fail(err, st, "%s: interrupted", output);
        goto done;
    }
    widen_meter_next(&meter, read_back);
    if (meter.fn && widen_meter_progress(&meter, 0, read_back)) {
        st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", output);
        goto done;
    }
    if (cmp.base.position != v.out->size && cmp.count < 64)
        cmp.mismatches[cmp.count++] = cmp.base.position < v.out->size ? cmp.base.position : v.out->size;
    for (size_t i = 0; i < cmp.count; i++) {
        char what[900];
        if (to_pt) explain_pt(&v, &layout, cmp.mismatches[i], what, sizeof what);
        else if (to_npz) explain_npz(&v, &npz_layout, cmp.mismatches[i], what, sizeof what);
        else explain_safetensors(&v, cmp.mismatches[i], what, sizeof what);
        difference(report, "%s: %s", output, what);
    }
    if (cmp.base.position < v.out->size)
        difference(report, "%s: %llu bytes follow what widen writes", output,
                   (unsigned long long)(v.out->size - cmp.base.position));
    /* 3. the records the graph names */
    if (to_pt && report->differences == before) check_sources(&v, &layout);
    /* 4. the output read back as its reader reads it (views gathered, a .pt's storages through its
     * graph): each tensor whose bytes the replay hashed holds exactly them. Independent of the writer:
     * a writer that put the right hashes and the wrong bytes in a file is caught here. */
    widen_meter tensors = {.fn = meter.fn ? widen_meter_progress : NULL, .user = &meter, .total = read_back};
    for (size_t i = 0; i < v.plan.count && report->differences == before && !st; i++) {
        const widen_plan_tensor *p = &v.plan.tensors[i];
        long at = widen_tensor_find(v.out, p->name);
        widen_hash128 h;
        if (at < 0) continue; /* (names were compared in step 1) */
        widen_meter_next(&tensors, read_back_bytes(v.out, (size_t)at));
        if (to_pt && !p->hashed) continue;
        if ((st = widen_tensor_hash(v.out, (size_t)at, &h, tensors.fn ? widen_meter_progress : NULL, &tensors, err)))
            goto done;
        if (h.high != p->out_hash.high || h.low != p->out_hash.low)
            difference(report, "%s: tensor '%s', read back, does not hold the transform's bytes", output, p->name);
    }
    if (manifest) check_manifest_hashes(manifest, manifest_name, &v.plan, report);
    st = report->differences != before ? WIDEN_DIFFERENT : WIDEN_OK;
    /* a difference ends the reading early: the run is over all the same */
    if (widen_meter_end(&meter) && st == WIDEN_OK) st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", output);
done:
    free(v.provenance);
    widen_torch_layout_free(&layout);
    widen_npz_layout_free(&npz_layout);
    free(v.in_to_out);
    free(v.out_to_in);
    free(v.storage_source);
    free(v.slot_keys);
    widen_table_free(&v.transformed);
    widen_plan_free(&v.plan);
    widen_close(v.in);
    widen_close(v.out);
    return st;
}

json_t *widen_manifest_load(const char *path, widen_error *err)
{
    return load_manifest(path, err);
}

void widen_verify_options_init(widen_verify_options *o, size_t size)
{
    const widen_verify_options defaults = {.size = sizeof defaults};
    widen_options_init(o, size, &defaults, sizeof defaults);
}

void widen_verify_report_init(widen_verify_report *r, size_t size)
{
    const widen_verify_report empty = {.size = sizeof empty};
    widen_options_init(r, size, &empty, sizeof empty);
}

/* The first published layouts end with progress_user and first. */
enum { VERIFY_OPTIONS_V1 = offsetof(widen_verify_options, progress_user) + sizeof(void *),
       VERIFY_REPORT_V1 = offsetof(widen_verify_report, first) + sizeof(((widen_verify_report *)0)->first) };

widen_status widen_verify_begin(const char *what, const char *input, const char *output,
                                const widen_verify_options *given, widen_verify_report *report,
                                widen_verify_options *options, widen_error *err)
{
    if (!input || !output || !report)
        return widen_fail(err, WIDEN_EUSAGE, "%s needs an input path, an output path and a report", what);
    if (report->size < VERIFY_REPORT_V1)
        return widen_fail(err, WIDEN_EUSAGE, "widen_verify_report.size is %zu, not a size this library knows (%zu): "
                          "fill the report with widen_verify_report_init first", report->size, sizeof *report);
    widen_verify_options_init(options, sizeof *options);
    return widen_options_read(options, sizeof *options, VERIFY_OPTIONS_V1, given, "widen_verify_options", err);
}

void widen_verify_end(const widen_verify_report *full, widen_verify_report *report)
{
    size_t size = report->size < sizeof *full ? report->size : sizeof *full;
    memcpy((unsigned char *)report + sizeof report->size, (const unsigned char *)full + sizeof full->size,
           size - sizeof full->size);
}

widen_status widen_verify(const char *input, const char *output, const widen_verify_options *options,
                          widen_verify_report *given_report, widen_error *err)
{
    widen_verify_options o;
    widen_verify_report full;
    widen_verify_report_init(&full, sizeof full);
    widen_status st = widen_verify_begin("widen_verify", input, output, options, given_report, &o, err);
    if (st) return st;
    st = widen_verify_file(input, output, &o, &full, err);
    widen_verify_end(&full, given_report);
    return st;
}

widen_status widen_verify_file(const char *input, const char *output, const widen_verify_options *o,
                               widen_verify_report *report, widen_error *err)
{
    const char *manifest_path = o->manifest_path;
    widen_transform *tr = NULL;
    json_t *manifest = NULL;
    char *provenance = NULL;
    widen_checkpoint *out = NULL;
    widen_status st = widen_isa_init(err);
    if (st) return st;
    if (manifest_path) {
        if (!(manifest = load_manifest(manifest_path, err))) return err ? err->status : WIDEN_EFORMAT;
        /* apply records the transform's JSON in the manifest as it writes it into a safetensors
         * output: compact, the same keys in the same order */
        provenance = json_dumps(json_object_get(manifest, "transform"), JSON_COMPACT);
        st = provenance ? widen_transform_from_json(provenance, &tr, err) : widen_fail(err, WIDEN_EIO, "out of memory");
    } else if (!(st = widen_open_ex(output, &(const widen_open_work){.defer = 1}, &out, err))) { /* its record only */
        /* an .npz records it as its archive comment, where widen wrote one */
        int npz = strcmp(out->format, "npz") == 0;
        const char *comment = NULL;
        size_t comment_len = 0;
        char *from_comment = npz && widen_npz_comment(out, &comment, &comment_len) && comment_len
                             ? strndup(comment, comment_len) : NULL;
        const char *recorded = npz ? from_comment : metadata_get(out, WIDEN_PROVENANCE_KEY);
        if (!recorded) {
            st = npz ? widen_fail_hint(err, WIDEN_HINT_MANIFEST, WIDEN_EUSAGE, "%s: no transform recorded (the "
                                       "archive has no comment): a manifest is needed to verify it", output)
                     : widen_fail_hint(err, WIDEN_HINT_MANIFEST, WIDEN_EUSAGE, "%s: no transform recorded (no '%s' "
                                       "metadata key): a manifest is needed to verify it", output, WIDEN_PROVENANCE_KEY);
        } else {
            /* the output is compared with what widen writes for the transform it records: the record
             * written again as widen writes it, which a record with other keys, order or text is not */
            st = widen_transform_from_json(recorded, &tr, err);
            if (!st && !(provenance = widen_transform_canonical(tr, recorded)))
                st = widen_fail(err, WIDEN_EIO, "out of memory");
        }
        free(from_comment);
        widen_close(out);
    }
    widen_verify_work work = {.threads = o->threads, .progress = o->progress, .progress_user = o->progress_user};
    if (!work.threads) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        work.threads = cpus > 0 ? (unsigned)cpus : 1;
    }
    if (!st) st = widen_verify_run(input, output, tr, provenance, manifest, manifest_path, &work, NULL, report, err);
    free(provenance);
    widen_transform_free(tr);
    json_decref(manifest);
    return st;
}
