/* write_torch.c: writing a torch.save zip checkpoint: the input's object graph with each transformed
 * tensor given a storage of its own, storages renumbered in order of first appearance as the pickle
 * is written, and the archive laid out as torch.save lays it out (FORMATS.md), streamed through the
 * executor. Storages the graph reaches through values widen does not model pass through as they are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "format/torch.h"
#include "write.h"

#define NOMEM() widen_fail(err, WIDEN_EIO, "out of memory")

/* The top folder of every archive widen writes (what torch.save writes to a buffer): never the
 * input's, which could be anything, '../' included. */
#define ARCHIVE_PREFIX "archive/"

typedef struct out_storage {
    long input;      /* input storage index, or -1 for a transformed tensor's new storage */
    long plan_index; /* the tensor plan item of a transformed tensor */
    widen_dtype dtype;
    int untyped;     /* an UntypedStorage (numel counts bytes) */
    long key;        /* output key, in order of first appearance; -1 until seen */
    pk_node *key_node;
} out_storage;

typedef struct undo_slot {
    pk_node **slot;
    pk_node *was;
} undo_slot;

typedef struct writer {
    widen_checkpoint *ckpt;
    undo_slot *undo; /* the slots rebind changed: the input's graph is left as it was found */
    size_t undo_count;
    torch_state *ts;
    pk_arena *arena;
    out_storage *outs;
    size_t out_count;
    long *order; /* output key -> out storage */
    size_t keys;
    pk_node *storage_word;
    pk_node *classes[WIDEN_DTYPE_COUNT]; /* storage class globals made for cast or new storages */
    pk_node *untyped_class;
    widen_error *err;
} writer;

/* The tuple written for a persistent id: its storage's output key, class and size. */
static pk_node *persid_out(void *user, pk_node *persid, widen_status *st)
{
    writer *w = user;
    widen_error *err = w->err;
    out_storage *o = &w->outs[persid->i];
    const pk_node *old = persid->items[0];
    if (o->key < 0) {
        char key[32];
        int len = snprintf(key, sizeof key, "%zu", w->keys);
        if (!(o->key_node = pk_str(w->arena, key, (size_t)len))) return *st = NOMEM(), NULL;
        o->key = (long)w->keys;
        w->order[w->keys++] = persid->i;
    }
    /* the class: the input's, unless the element type changed (a cast, or a transformed tensor's new
     * storage, which is an UntypedStorage counting bytes wherever a _rebuild_tensor_v3 views it) */
    pk_node *type = old->items[1];
    int64_t numel = old->items[4]->i; /* a new storage's: rebind wrote it */
    if (o->untyped && o->input < 0) {
        if (!w->untyped_class && !(w->untyped_class = pk_global(w->arena, "torch.storage", "UntypedStorage")))
            return *st = NOMEM(), NULL;
        type = w->untyped_class;
    } else if (o->input < 0 || o->dtype != w->ts->storages[o->input].dtype) {
        if (!w->classes[o->dtype] &&
            !(w->classes[o->dtype] = pk_global(w->arena, "torch", widen_torch_storage_name(o->dtype))))
            return *st = NOMEM(), NULL;
        type = w->classes[o->dtype];
    }
    pk_node *items[] = {w->storage_word, type, o->key_node, old->items[3], pk_int(w->arena, numel)};
    pk_node *t = pk_tuple(w->arena, items, 5);
    if (!t) *st = NOMEM();
    return t;
}

/* Gives named tensor `index` a new storage (out storage `out`) holding the plan's bytes: a new
 * persistent id, offset 0, the new size, contiguous strides; the rest of its arguments (and any
 * Parameter or _rebuild_from_type_v2 around it) as they were. This name's slot gets copies of the
 * calls on the way down, so that other names of the same tensor object keep the old one. */
static widen_status rebind(writer *w, size_t index, const widen_plan_tensor *p, size_t out)
{
    widen_error *err = w->err;
    torch_tensor *tt = &w->ts->tensors[index];
    pk_arena *a = w->arena;
    const pk_node *old_pid = tt->args->items[0]->items[0];
    uint64_t numel = 1;
    for (int d = 0; d < p->rank; d++) numel *= p->shape[d];
    if (w->outs[out].untyped) numel *= widen_dtype_bits(p->dtype) / 8;
    pk_node *pid_items[] = {old_pid->items[0], old_pid->items[1], old_pid->items[2], old_pid->items[3],
                            pk_int(a, (int64_t)numel)};
    pk_node *pid = pk_new(a, PK_PERSID), *pid_tuple = pk_tuple(a, pid_items, 5);
    pk_node *size = pk_new(a, PK_TUPLE), *stride = pk_new(a, PK_TUPLE);
    if (!pid || !pid_tuple || !size || !stride || pk_append(a, pid, pid_tuple)) return NOMEM();
    pid->i = (int64_t)out;
    uint64_t step = 1;
    pk_node *strides[WIDEN_MAX_RANK];
    for (int d = p->rank - 1; d >= 0; d--) {
        strides[d] = pk_int(a, (int64_t)step);
        step *= p->shape[d] ? p->shape[d] : 1;
    }
    for (int d = 0; d < p->rank; d++)
        if (pk_append(a, size, pk_int(a, (int64_t)p->shape[d])) || pk_append(a, stride, strides[d])) return NOMEM();
    pk_node *args = pk_copy(a, tt->args);
    if (!args) return NOMEM();
    args->items[0] = pid;
    if (!(args->items[1] = pk_int(a, 0))) return NOMEM();
    args->items[2] = size;
    args->items[3] = stride;
    if (tt->v3 && p->dtype != w->ckpt->tensors[index].dtype && /* cast: _rebuild_tensor_v3 names the dtype */
        !(args->items[6] = pk_global(a, "torch", widen_torch_dtype_name(p->dtype))))
        return NOMEM();
    /* copies from the site down to the arguments */
    pk_node *site = NULL, *parent = NULL, *orig = tt->site;
    for (uint8_t d = 0; d < tt->depth; d++) {
        pk_node *copy = pk_copy(a, orig);
        if (!copy) return NOMEM();
        if (parent) parent->items[tt->path[d - 1]] = copy;
        else site = copy;
        parent = copy;
        orig = orig->items[tt->path[d]];
    }
    parent->items[tt->path[tt->depth - 1]] = args;
    /* into the slot until the pickle is written; widen_torch_write puts the input's value back */
    pk_node **slot = tt->holder ? &tt->holder->items[tt->slot] : &w->ts->root;
    w->undo[w->undo_count++] = (undo_slot){slot, *slot};
    *slot = site;
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* The archive, streamed: records in torch.save's order, each storage's bytes from the executor.   */

typedef struct archive_sink {
    const widen_checkpoint *ckpt; /* the input: its descriptor, for copies */
    widen_output *out;
    widen_zip_writer *zw;
    const widen_plan *plan; /* the data records */
    size_t begun; /* data records begun */
} archive_sink;

/* A data record whose bytes lie at its input offset modulo WIDEN_CLONE_BLOCK (a long one, copied
 * unchanged), so that a file system that clones shares its whole blocks: the input offset, else -1. */
static int64_t congruent_to(const widen_plan_tensor *p)
{
    return p && p->op == WIDEN_OP_COPY && !p->strided && p->nbytes >= WIDEN_CLONE_MIN ? (int64_t)p->in->offset : -1;
}

static widen_status record_begin(archive_sink *s, const char *name, const widen_plan_tensor *p, widen_error *err)
{
    char full[128];
    unsigned char header[128 + 4 + WIDEN_CLONE_BLOCK];
    snprintf(full, sizeof full, "%s%s", ARCHIVE_PREFIX, name);
    size_t len = widen_zip_begin(s->zw, full, congruent_to(p), header, sizeof header);
    if (!len) return NOMEM();
    return s->out->write(s->out, header, len, err);
}

/* p: the data record's plan item (NULL for the others): a record copied whole from an input record
 * keeps that record's CRC-32, whatever way its bytes came. */
static widen_status record_end(archive_sink *s, const widen_plan_tensor *p, widen_error *err)
{
    unsigned char descriptor[24];
    if (p && p->crc_known) s->zw->crc = p->crc;
    size_t len = widen_zip_end(s->zw, descriptor);
    return len ? s->out->write(s->out, descriptor, len, err) : WIDEN_OK;
}

static widen_status record_bytes(archive_sink *s, const void *data, size_t len, widen_error *err)
{
    widen_zip_data(s->zw, data, len);
    return s->out->write(s->out, data, len, err);
}

static widen_status small_record(archive_sink *s, const char *name, const void *data, size_t len, widen_error *err)
{
    widen_status st = record_begin(s, name, NULL, err);
    if (!st) st = record_bytes(s, data, len, err);
    return st ? st : record_end(s, NULL, err);
}

/* Opens data records up to and including `index` (empty storages get no sink call of their own). */
static widen_status open_through(archive_sink *s, size_t index, widen_error *err)
{
    while (s->begun <= index) {
        widen_status st;
        if (s->begun > 0 && (st = record_end(s, &s->plan->tensors[s->begun - 1], err))) return st;
        char name[64];
        snprintf(name, sizeof name, "data/%zu", s->begun);
        if ((st = record_begin(s, name, &s->plan->tensors[s->begun], err))) return st;
        s->begun++;
    }
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* The data records of an output that takes bytes at offsets: where every local header, record and  */
/* data descriptor goes is known before a byte of data is written (the sizes are the plan's), so the */
/* records' bytes go from several threads at once, and the headers and descriptors, which hold the   */
/* CRC-32s, after them. The bytes are the streamed writer's.                                        */

/* Small writes at offsets, gathered while they follow each other (a descriptor and the next header). */
typedef struct gather {
    widen_output *out;
    unsigned char buffer[64u << 10];
    uint64_t from;
    size_t filled;
} gather;

static widen_status gather_flush(gather *g, widen_error *err)
{
    widen_status st = g->filled ? g->out->write_at(g->out, g->from, g->buffer, g->filled, err) : WIDEN_OK;
    g->filled = 0;
    return st;
}

static widen_status gather_put(gather *g, uint64_t at, const unsigned char *data, size_t len, widen_error *err)
{
    widen_status st = WIDEN_OK;
    if (g->filled && (at != g->from + g->filled || g->filled + len > sizeof g->buffer)) st = gather_flush(g, err);
    if (st || !len) return st;
    if (len > sizeof g->buffer) return g->out->write_at(g->out, at, data, len, err);
    if (!g->filled) g->from = at;
    memcpy(g->buffer + g->filled, data, len);
    g->filled += len;
    return WIDEN_OK;
}

/* Record k's local header into `header` (its length: 0 when out of memory) as zw's next entry. */
static size_t data_header(widen_zip_writer *zw, const widen_plan *plan, size_t k, unsigned char *header, size_t size)
{
    char name[64];
    snprintf(name, sizeof name, ARCHIVE_PREFIX "data/%zu", k);
    return widen_zip_begin(zw, name, congruent_to(&plan->tensors[k]), header, size);
}

static widen_status records_at_offsets(archive_sink *s, widen_plan *plan, const widen_exec_options *eo, widen_error *err)
{
    widen_zip_writer *zw = s->zw, probe = {.offset = zw->offset, .alignment = zw->alignment};
    widen_output *out = s->out;
    uint64_t base = out->position - zw->offset; /* the output offset of the archive's first byte */
    uint64_t *at = malloc(plan->count * sizeof *at);
    uint32_t *crc = malloc(plan->count * sizeof *crc);
    gather *g = malloc(sizeof *g);
    unsigned char header[128 + 4 + WIDEN_CLONE_BLOCK], descriptor[24];
    widen_status st = at && crc && g ? WIDEN_OK : NOMEM();
    /* where each record's bytes go: the layout the streamed writer makes, with sizes for data */
    for (size_t k = 0; k < plan->count && !st; k++) {
        if (!data_header(&probe, plan, k, header, sizeof header)) st = NOMEM();
        else at[k] = base + probe.entries[probe.count - 1].data_offset;
        widen_zip_copied(&probe, plan->tensors[k].nbytes, 0);
        widen_zip_end(&probe, descriptor);
    }
    widen_zip_writer_free(&probe);
    if (!st) st = widen_write_tensors_at(s->ckpt, plan, at, crc, out, eo, err);
    /* then the headers and descriptors, with the CRC-32s; a record copied whole keeps its input's */
    if (g) *g = (gather){.out = out};
    for (size_t k = 0; k < plan->count && !st; k++) {
        uint64_t header_at = base + zw->offset;
        size_t len = data_header(zw, plan, k, header, sizeof header);
        if (!len) st = NOMEM();
        else if (base + zw->offset != at[k]) st = widen_fail(err, WIDEN_EIO, "internal error: a record moved");
        else st = gather_put(g, header_at, header, len, err);
        widen_zip_copied(zw, plan->tensors[k].nbytes, plan->tensors[k].crc_known ? plan->tensors[k].crc : crc[k]);
        uint64_t descriptor_at = base + zw->offset;
        len = widen_zip_end(zw, descriptor);
        if (!st) st = gather_put(g, descriptor_at, descriptor, len, err);
    }
    if (!st) st = gather_flush(g, err);
    if (!st) out->position = base + zw->offset;
    free(at);
    free(crc);
    free(g);
    return st;
}

static widen_status sink_archive(void *user, size_t index, uint64_t offset, const void *data, size_t len, widen_error *err)
{
    (void)offset;
    archive_sink *s = user;
    widen_status st = open_through(s, index, err);
    return st ? st : record_bytes(s, data, len, err);
}

/* An untouched storage: its bytes copied inside the kernel (sink_archive_copied gets the CRC). */
static widen_status sink_archive_copy(void *user, size_t index, uint64_t offset, uint64_t in_offset, size_t len,
                                      widen_error *err)
{
    (void)offset;
    archive_sink *s = user;
    widen_status st = open_through(s, index, err);
    if (st) return st;
    /* WIDEN_EUSAGE leaves the record open: the bytes follow through the sink */
    return s->out->copy ? s->out->copy(s->out, widen_checkpoint_fd(s->ckpt), in_offset, len, err) : WIDEN_EUSAGE;
}

/* The copied storage's CRC-32, computed by the executor's hashing pass over the same bytes. */
static widen_status sink_archive_copied(void *user, size_t index, uint64_t len, uint32_t crc, widen_error *err)
{
    (void)index, (void)err;
    archive_sink *s = user;
    widen_zip_copied(s->zw, len, crc);
    return WIDEN_OK;
}

/* Tensors whose bytes are exactly one output storage's get that storage's hashes, so that a manifest
 * needs no second read of them: transformed tensors (their storage is new) and untouched tensors that
 * view a whole storage from its start, contiguously (the usual state dict). */
static void share_hashes(const writer *w, widen_plan *tensor_plan, const widen_plan *plan)
{
    for (size_t j = 0; j < w->out_count; j++) { /* transformed tensors: the storages after the input's */
        const out_storage *o = &w->outs[j];
        if (o->input >= 0 || o->key < 0) continue;
        widen_plan_tensor *p = &tensor_plan->tensors[o->plan_index];
        p->in_hash = plan->tensors[o->key].in_hash;
        p->out_hash = plan->tensors[o->key].out_hash;
        p->hashed = 1;
    }
    for (size_t i = 0; i < tensor_plan->count; i++) {
        widen_plan_tensor *p = &tensor_plan->tensors[i];
        const torch_tensor *tt = &w->ts->tensors[p->in - w->ckpt->tensors];
        const out_storage *o = &w->outs[tt->storage]; /* the first storage_count outs are the input's, in order */
        if (p->hashed || o->key < 0 || tt->storage_offset != 0 || !tt->contiguous || p->strided) continue;
        const widen_plan_tensor *item = &plan->tensors[o->key];
        if (p->in->nbytes != item->in->nbytes || p->dtype != item->dtype || p->in->dtype != item->in->dtype) continue;
        p->in_hash = item->in_hash;
        p->out_hash = item->out_hash;
        p->hashed = 1;
    }
}

static widen_status sink_none(void *user, size_t index, uint64_t offset, const void *data, size_t len, widen_error *err)
{
    (void)user, (void)index, (void)offset, (void)data, (void)len, (void)err;
    return WIDEN_OK;
}

/* The manifest's hashes of the tensors a .pt output did not hash whole (views into part of a
 * storage, strided tensors): one more read of those tensors alone. */
widen_status widen_torch_hash_views(const widen_checkpoint *ckpt, widen_plan *plan, const widen_exec_options *eo,
                               widen_error *err)
{
    widen_plan rest = *plan;
    rest.tensors = malloc((plan->count + 1) * sizeof *rest.tensors);
    if (!rest.tensors) return widen_fail(err, WIDEN_EIO, "out of memory");
    rest.count = 0;
    rest.data_bytes = 0;
    for (size_t i = 0; i < plan->count; i++)
        if (!plan->tensors[i].hashed) {
            rest.tensors[rest.count++] = plan->tensors[i];
            rest.data_bytes += plan->tensors[i].nbytes;
        }
    widen_status st = rest.count ? widen_execute(ckpt, &rest, eo, sink_none, NULL, err) : WIDEN_OK;
    for (size_t i = 0, k = 0; i < plan->count && !st; i++)
        if (!plan->tensors[i].hashed) plan->tensors[i] = rest.tensors[k++];
    free(rest.tensors);
    return st;
}

void widen_torch_layout_free(widen_torch_layout *layout)
{
    free(layout->source);
    for (size_t i = 0; i < layout->entry_count; i++) free(layout->entries[i].name);
    free(layout->entries);
    memset(layout, 0, sizeof *layout);
}

widen_status widen_torch_write(widen_checkpoint *c, const widen_transform *tr, widen_plan *tensor_plan, widen_output *out,
                               const widen_exec_options *eo, widen_torch_layout *layout, widen_error *err)
{
    widen_status st = widen_torch_synthesize(c, err); /* a safetensors input gets a state dict's graph */
    if (st) return st;
    torch_state *ts = c->format_state;
    writer w = {.ckpt = c, .ts = ts, .arena = ts->arena, .err = err};
    size_t edits = 0;
    for (size_t i = 0; i < tensor_plan->count; i++) edits += tensor_plan->tensors[i].axis >= 0;
    w.outs = calloc(ts->storage_count + edits + 1, sizeof *w.outs);
    w.undo = calloc(edits + 1, sizeof *w.undo);
    w.order = calloc(ts->storage_count + edits + 1, sizeof *w.order);
    widen_plan plan = {0};
    widen_tensor_info *views = calloc(ts->storage_count + 1, sizeof *views);
    pk_buffer pickle = {0};
    widen_zip_writer zw = {.alignment = 64};
    w.storage_word = pk_str(ts->arena, "storage", 7);
    if (!w.outs || !w.order || !views || !w.storage_word || !w.undo) st = NOMEM();
    for (size_t i = 0; i < ts->storage_count && !st; i++) {
        const torch_storage *s = &ts->storages[i];
        /* cast: a whole storage, when only named _rebuild_tensor_v2 tensors view it (the plan casts
         * exactly those tensors: widen_tensor_castable) */
        int cast = tr->cast && widen_dtype_is_computable(s->dtype) && s->dtype != tr->cast_to && !s->pinned && !s->v3_viewed;
        w.outs[w.out_count++] = (out_storage){.input = (long)i, .plan_index = -1, .key = -1,
                                              .dtype = cast ? tr->cast_to : s->dtype,
                                              .untyped = pk_role_of(s->type) == PK_ROLE_UNTYPED_STORAGE};
    }
    for (size_t i = 0; i < tensor_plan->count && !st; i++) {
        const widen_plan_tensor *p = &tensor_plan->tensors[i];
        if (p->axis < 0) continue;
        size_t index = (size_t)(p->in - c->tensors);
        const torch_tensor *tt = &ts->tensors[index];
        int untyped = tt->v3 || !widen_torch_storage_name(p->dtype);
        w.outs[w.out_count] = (out_storage){.input = -1, .plan_index = (long)i, .key = -1, .dtype = p->dtype,
                                            .untyped = untyped};
        st = rebind(&w, index, p, w.out_count++);
    }
    if (!st) st = pk_dump(ts->arena, ts->root, persid_out, &w, &pickle, err);
    while (w.undo && w.undo_count) { /* latest first: a slot changed twice gets its first value back */
        w.undo_count--;
        *w.undo[w.undo_count].slot = w.undo[w.undo_count].was;
    }
    /* the data records, in key order */
    plan.tensors = calloc(w.keys + 1, sizeof *plan.tensors);
    plan.identity = calloc(1, sizeof *plan.identity);
    if (!st && (!plan.tensors || !plan.identity)) st = NOMEM();
    for (size_t k = 0; k < w.keys && !st; k++) {
        const out_storage *o = &w.outs[w.order[k]];
        widen_plan_tensor *p = &plan.tensors[k];
        if (o->input < 0) {
            *p = tensor_plan->tensors[o->plan_index];
        } else {
            const torch_storage *s = &ts->storages[o->input];
            widen_tensor_info *v = &views[o->input];
            int copy = o->dtype == s->dtype;
            widen_dtype dtype = s->dtype == WIDEN_DTYPE_COUNT ? WIDEN_U8 : s->dtype;
            /* a NumPy array whose bytes are not its values (Fortran order, big-endian): the storage
             * synthesized for tensor i (storage i) holds its values, gathered as the tensor's dtype */
            int gathered = c->layouts && c->layouts[o->input].gathered;
            if (gathered) dtype = c->tensors[o->input].dtype;
            uint64_t numel = copy ? s->entry->size / (widen_dtype_bits(dtype) / 8) : s->numel;
            v->name = s->key;
            v->dtype = dtype;
            v->rank = 1;
            v->shape[0] = numel;
            v->offset = s->entry->data_offset;
            v->nbytes = s->entry->size;
            p->in = gathered ? &c->tensors[o->input] : v;
            p->strided = gathered;
            p->name = s->key;
            p->op = copy ? WIDEN_OP_COPY : WIDEN_OP_REMAP;
            p->dtype = copy ? dtype : o->dtype;
            p->rank = 1;
            p->shape[0] = numel;
            p->axis = -1;
            p->map = plan.identity;
            p->in_channels = p->channels = 1;
            p->outer = 1;
            p->inner = numel;
            p->nbytes = numel * (widen_dtype_bits(p->dtype) / 8);
            /* copied whole from a record of the input's zip directory: its CRC-32 is known */
            p->crc_known = copy && !gathered && !ts->legacy && strcmp(c->format, "pt") == 0 &&
                           p->nbytes == s->entry->size;
            p->crc = s->entry->crc;
        }
        plan.data_bytes += p->nbytes;
    }
    plan.count = w.keys;
    archive_sink sink = {.ckpt = c, .out = out, .zw = &zw, .plan = &plan};
    /* torch's readers may compute the data offsets of an archive with .format_version from the
     * layout torch.save makes (64-byte alignment, FORMATS.md): one whose records lie where cloning
     * wants them says nothing of the kind */
    int torch_layout = 1;
    for (size_t k = 0; k < plan.count; k++) torch_layout &= congruent_to(&plan.tensors[k]) < 0;
    widen_exec_options copying = *eo;
    copying.copy = out->copy ? sink_archive_copy : NULL;
    copying.copy_one_item = 1;
    copying.copied = sink_archive_copied;
    if (!st) st = small_record(&sink, "data.pkl", pickle.data, pickle.len, err);
    if (!st && torch_layout) st = small_record(&sink, ".format_version", "1", 1, err);
    if (!st && torch_layout) st = small_record(&sink, ".storage_alignment", "64", 2, err);
    if (!st) st = small_record(&sink, "byteorder", "little", 6, err);
    if (!st && out->write_at && out->copy_at && eo->threads > 1 && plan.count) {
        st = records_at_offsets(&sink, &plan, eo, err);
    } else {
        if (!st) st = widen_execute(c, &plan, &copying, sink_archive, &sink, err);
        if (!st && w.keys) st = open_through(&sink, w.keys - 1, err);
        if (!st && w.keys) st = record_end(&sink, &plan.tensors[w.keys - 1], err);
    }
    if (!st) share_hashes(&w, tensor_plan, &plan);
    if (!st) st = small_record(&sink, "version", "3\n", 2, err);
    if (!st) { /* derived from the content (the pickle, each record's CRC-32 and size), so equal inputs
                * and arguments give equal files, without reading the bytes of records copied whole */
        const widen_kernels *k = widen_kernels_for(widen_isa_active());
        widen_hash_state hs;
        k->hash_reset(&hs);
        k->hash_update(&hs, pickle.data, pickle.len);
        for (size_t i = 0; i < zw.count; i++) {
            unsigned char item[12];
            for (int b = 0; b < 4; b++) item[b] = (unsigned char)(zw.entries[i].crc >> (8 * b));
            for (int b = 0; b < 8; b++) item[4 + b] = (unsigned char)(zw.entries[i].size >> (8 * b));
            k->hash_update(&hs, item, sizeof item);
        }
        char id[33];
        widen_hash128_hex(k->hash_digest(&hs), id);
        st = small_record(&sink, ".data/serialization_id", id, 32, err);
    }
    if (!st) {
        unsigned char *tail = NULL;
        size_t len = 0;
        st = widen_zip_finish(&zw, &tail, &len, err);
        if (!st) st = out->write(out, tail, len, err);
        free(tail);
    }
    if (!st && layout) { /* what verify needs to say where a difference lies, and whose bytes each record holds */
        memset(layout, 0, sizeof *layout);
        layout->source = calloc(w.keys + 1, sizeof *layout->source);
        if (!layout->source) st = NOMEM();
        for (size_t k = 0; k < w.keys && !st; k++) {
            const out_storage *o = &w.outs[w.order[k]];
            layout->source[k] = o->input >= 0 ? o->input : -1 - o->plan_index;
        }
        layout->keys = w.keys;
        layout->entries = zw.entries;
        layout->entry_count = zw.count;
        zw.entries = NULL;
        zw.count = 0;
    }
    widen_zip_writer_free(&zw);
    free(pickle.data);
    free(plan.tensors);
    free(plan.identity);
    free(views);
    free(w.outs);
    free(w.order);
    free(w.undo);
    return st;
}
