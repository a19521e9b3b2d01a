/* torch_write.c: writing a torch.save zip checkpoint: the input's object tree with the transformed
 * tensors given storages of their own, storages renumbered in order of first appearance, and the
 * archive laid out as torch.save lays it out (FORMATS.md), streamed through the executor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kernels.h"
#include "../internal.h"
#include "torch.h"

const char *widen_torch_storage_name(widen_dtype dtype);
widen_status widen_torch_synthesize(widen_checkpoint *c, widen_error *err);

typedef struct out_storage {
    long input;      /* input storage index, or -1 for a transformed tensor's new storage */
    long plan_index; /* the tensor plan item of a transformed tensor */
    widen_dtype dtype;
    long key;        /* output key, assigned in order of first appearance; -1 until seen */
} out_storage;

typedef struct writer {
    widen_checkpoint *ckpt;
    torch_state *ts;
    pk_arena *arena;
    out_storage *outs;
    size_t out_count;
    long *order; /* output key -> out storage */
    size_t keys;
    widen_error *err;
} writer;

static long input_storage(const torch_state *ts, const pk_node *persid)
{
    const char *key = persid->items[0]->items[2]->s;
    for (size_t i = 0; i < ts->storage_count; i++)
        if (strcmp(ts->storages[i].key, key) == 0) return (long)i;
    return -1;
}

/* Emission order, as pk_dump walks: every persistent id gets its storage's output key. */
static widen_status number(writer *w, pk_node *n)
{
    if (n->memo == -2) return WIDEN_OK; /* visited */
    n->memo = -2;
    if (n->kind == PK_PERSID) {
        pk_node *t = n->items[0];
        long out = t->i < 0 ? -t->i - 1 : -1;
        if (out < 0) {
            long in = input_storage(w->ts, n);
            for (size_t k = 0; k < w->out_count && out < 0; k++)
                if (w->outs[k].input == in) out = (long)k;
        }
        if (out < 0) return widen_fail(w->err, WIDEN_EFORMAT, "%s: a storage the pickle names is not in the archive", w->ckpt->path);
        out_storage *o = &w->outs[out];
        if (o->key < 0) {
            o->key = (long)w->keys;
            w->order[w->keys++] = out;
        }
        char key[32];
        snprintf(key, sizeof key, "%ld", o->key);
        pk_node *k = pk_str(w->arena, key), *type = pk_global(w->arena, "torch", widen_torch_storage_name(o->dtype));
        if (!k || !type) return widen_fail(w->err, WIDEN_EIO, "out of memory");
        t->items[2] = k;
        t->items[1] = type;
        return WIDEN_OK;
    }
    widen_status st = WIDEN_OK;
    for (size_t i = 0; i < n->count && !st; i++) st = number(w, n->items[i]);
    for (size_t i = 0; i < n->kv_count && !st; i++) st = number(w, n->kv[i]);
    if (!st && n->state) st = number(w, n->state);
    return st;
}

/* Gives tensor `index` a new storage holding its transformed bytes: a new persistent id, offset 0,
 * the new size, contiguous strides. */
static widen_status rebind(writer *w, size_t index, const widen_plan_tensor *p, long out)
{
    torch_tensor *tt = &w->ts->tensors[index];
    pk_node *call = tt->node, *old_args = call->items[1], *old_pid = old_args->items[0]->items[0];
    pk_arena *a = w->arena;
    pk_node *args = pk_new(a, PK_TUPLE), *pid = pk_new(a, PK_PERSID), *tuple = pk_new(a, PK_TUPLE);
    pk_node *size = pk_new(a, PK_TUPLE), *stride = pk_new(a, PK_TUPLE);
    if (!args || !pid || !tuple || !size || !stride) return widen_fail(w->err, WIDEN_EIO, "out of memory");
    uint64_t numel = 1;
    for (int d = 0; d < p->rank; d++) numel *= p->shape[d];
    tuple->i = -(int64_t)out - 1; /* marks the new storage until keys are assigned */
    if (pk_append(a, tuple, old_pid->items[0]) || pk_append(a, tuple, old_pid->items[1]) ||
        pk_append(a, tuple, old_pid->items[2]) || pk_append(a, tuple, old_pid->items[3]) ||
        pk_append(a, tuple, pk_int(a, (int64_t)numel)) || pk_append(a, pid, tuple))
        return widen_fail(w->err, WIDEN_EIO, "out of memory");
    uint64_t stride_v = 1;
    pk_node *strides[WIDEN_MAX_RANK];
    for (int d = p->rank - 1; d >= 0; d--) {
        strides[d] = pk_int(a, (int64_t)stride_v);
        stride_v *= p->shape[d] ? p->shape[d] : 1;
    }
    for (int d = 0; d < p->rank; d++)
        if (pk_append(a, size, pk_int(a, (int64_t)p->shape[d])) || pk_append(a, stride, strides[d]))
            return widen_fail(w->err, WIDEN_EIO, "out of memory");
    pk_node *items[] = {pid, pk_int(a, 0), size, stride};
    for (size_t i = 0; i < old_args->count; i++)
        if (pk_append(a, args, i < 4 ? items[i] : old_args->items[i])) return widen_fail(w->err, WIDEN_EIO, "out of memory");
    /* The same tensor object may sit under other names too (torch pickles it once): this name gets
     * a copy of the call, and of the Parameter wrapping it, in its own slot. */
    pk_node *copy = pk_new(a, PK_REDUCE);
    if (!copy || pk_append(a, copy, call->items[0]) || pk_append(a, copy, args)) return widen_fail(w->err, WIDEN_EIO, "out of memory");
    copy->state = call->state;
    pk_node *held = *tt->slot;
    if (held != call) { /* _rebuild_parameter(call, requires_grad, hooks) */
        pk_node *wrap = pk_new(a, PK_REDUCE), *wargs = pk_new(a, PK_TUPLE);
        if (!wrap || !wargs || pk_append(a, wrap, held->items[0]) || pk_append(a, wrap, wargs))
            return widen_fail(w->err, WIDEN_EIO, "out of memory");
        for (size_t i = 0; i < held->items[1]->count; i++)
            if (pk_append(a, wargs, i == 0 ? copy : held->items[1]->items[i])) return widen_fail(w->err, WIDEN_EIO, "out of memory");
        wrap->state = held->state;
        copy = wrap;
    }
    *tt->slot = copy;
    return WIDEN_OK;
}

typedef struct archive_sink {
    const widen_checkpoint *ckpt; /* the input: its descriptor, for copies */
    int fd;
    const char *target;
    const char *prefix;
    widen_zip_writer *zw;
    size_t begun; /* data records begun */
    size_t total; /* data records */
} archive_sink;

static widen_status record_begin(archive_sink *s, const char *name)
{
    char full[600];
    unsigned char header[700];
    snprintf(full, sizeof full, "%s%s", s->prefix, name);
    size_t len = widen_zip_begin(s->zw, full, header, sizeof header);
    if (!len) return widen_fail(NULL, WIDEN_EIO, "out of memory");
    widen_error e;
    return widen_write_all(s->fd, header, len, s->target, &e);
}

static widen_status record_end(archive_sink *s, widen_error *err)
{
    unsigned char descriptor[24];
    size_t len = widen_zip_end(s->zw, descriptor);
    return widen_write_all(s->fd, descriptor, len, s->target, err);
}

static widen_status record_bytes(archive_sink *s, const void *data, size_t len, widen_error *err)
{
    widen_zip_data(s->zw, data, len);
    return widen_write_all(s->fd, data, len, s->target, err);
}

static widen_status small_record(archive_sink *s, const char *name, const char *text, widen_error *err)
{
    widen_status st = record_begin(s, name);
    if (st) return widen_fail(err, WIDEN_EIO, "%s: write failed", s->target);
    if ((st = record_bytes(s, text, strlen(text), err))) return st;
    return record_end(s, err);
}

/* Opens data records up to and including `index` (empty storages get no sink call of their own). */
static widen_status open_through(archive_sink *s, size_t index, widen_error *err)
{
    while (s->begun <= index) {
        widen_status st;
        if (s->begun > 0 && (st = record_end(s, err))) return st;
        char name[64];
        snprintf(name, sizeof name, "data/%zu", s->begun);
        if ((st = record_begin(s, name))) return widen_fail(err, WIDEN_EIO, "%s: write failed", s->target);
        s->begun++;
    }
    return WIDEN_OK;
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
    /* WIDEN_EUSAGE leaves the record open: the bytes follow through the sink */
    return st ? st : widen_copy_all(widen_checkpoint_fd(s->ckpt), in_offset, s->fd, len, s->target, err);
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
        if (p->in->nbytes != item->in->nbytes) continue;
        p->in_hash = item->in_hash;
        p->out_hash = item->out_hash;
        p->hashed = 1;
    }
}

widen_status widen_torch_write(widen_checkpoint *c, const widen_transform *tr, widen_plan *tensor_plan, int fd,
                               const char *target, const widen_exec_options *eo, widen_error *err)
{
    widen_status st0 = widen_torch_synthesize(c, err); /* a safetensors input gets a state dict's tree */
    if (st0) return st0;
    torch_state *ts = c->format_state;
    writer w = {.ckpt = c, .ts = ts, .arena = ts->arena, .err = err};
    size_t edits = 0;
    for (size_t i = 0; i < tensor_plan->count; i++) edits += tensor_plan->tensors[i].axis >= 0;
    w.outs = calloc(ts->storage_count + edits + 1, sizeof *w.outs);
    w.order = calloc(ts->storage_count + edits + 1, sizeof *w.order);
    widen_plan plan = {0};
    widen_tensor_info *views = calloc(ts->storage_count + 1, sizeof *views);
    pk_buffer pickle = {0};
    widen_zip_writer zw = {.alignment = 64};
    widen_status st = w.outs && w.order && views ? WIDEN_OK : widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < ts->storage_count && !st; i++) {
        widen_dtype d = ts->storages[i].dtype;
        w.outs[w.out_count++] = (out_storage){.input = (long)i, .plan_index = -1, .key = -1,
                                              .dtype = tr->cast && widen_dtype_is_computable(d) ? tr->cast_to : d};
    }
    for (size_t i = 0; i < tensor_plan->count && !st; i++) {
        const widen_plan_tensor *p = &tensor_plan->tensors[i];
        if (p->axis < 0) continue;
        size_t index = (size_t)(p->in - c->tensors);
        if (pk_is_global(ts->tensors[index].node->items[0], "torch._utils", "_rebuild_tensor_v3")) {
            st = widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' uses _rebuild_tensor_v3, which widen does not rewrite yet",
                            c->path, p->name);
            break;
        }
        w.outs[w.out_count] = (out_storage){.input = -1, .plan_index = (long)i, .key = -1, .dtype = p->dtype};
        st = rebind(&w, index, p, (long)w.out_count++);
    }
    pk_clear_marks(ts->arena);
    if (!st) st = number(&w, ts->root);
    if (!st) st = pk_dump(ts->arena, ts->root, &pickle, err);
    /* the data records, in key order */
    plan.tensors = calloc(w.keys + 1, sizeof *plan.tensors);
    plan.identity = calloc(1, sizeof *plan.identity);
    if (!st && (!plan.tensors || !plan.identity)) st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t k = 0; k < w.keys && !st; k++) {
        const out_storage *o = &w.outs[w.order[k]];
        widen_plan_tensor *p = &plan.tensors[k];
        if (o->input < 0) {
            *p = tensor_plan->tensors[o->plan_index];
        } else {
            const torch_storage *s = &ts->storages[o->input];
            widen_tensor_info *v = &views[o->input];
            v->name = s->key;
            v->dtype = s->dtype;
            v->rank = 1;
            v->shape[0] = s->numel;
            v->offset = s->entry->data_offset;
            v->nbytes = o->dtype == s->dtype ? s->entry->size : s->numel * (widen_dtype_bits(s->dtype) / 8);
            p->in = v;
            p->name = s->key;
            p->op = o->dtype == s->dtype ? WIDEN_OP_COPY : WIDEN_OP_REMAP;
            p->dtype = o->dtype;
            p->rank = 1;
            p->shape[0] = s->numel;
            p->axis = -1;
            p->map = plan.identity;
            p->in_channels = p->channels = 1;
            p->outer = 1;
            p->inner = s->numel;
            p->nbytes = o->dtype == s->dtype ? v->nbytes : s->numel * (widen_dtype_bits(o->dtype) / 8);
        }
        plan.data_bytes += p->nbytes;
    }
    plan.count = w.keys;
    archive_sink sink = {.ckpt = c, .fd = fd, .target = target, .prefix = ts->prefix, .zw = &zw, .total = w.keys};
    widen_exec_options copying = *eo;
    copying.copy = sink_archive_copy;
    copying.copy_one_item = 1;
    copying.copied = sink_archive_copied;
    if (!st) {
        widen_status ws = record_begin(&sink, "data.pkl");
        st = ws ? widen_fail(err, WIDEN_EIO, "%s: write failed", target) : record_bytes(&sink, pickle.data, pickle.len, err);
        if (!st) st = record_end(&sink, err);
    }
    if (!st) st = small_record(&sink, ".format_version", "1", err);
    if (!st) st = small_record(&sink, ".storage_alignment", "64", err);
    if (!st) st = small_record(&sink, "byteorder", "little", err);
    if (!st) st = widen_execute(c, &plan, &copying, sink_archive, &sink, err);
    if (!st) share_hashes(&w, tensor_plan, &plan);
    if (!st && w.keys) st = open_through(&sink, w.keys - 1, err);
    if (!st && w.keys) st = record_end(&sink, err);
    if (!st) st = small_record(&sink, "version", "3\n", err);
    if (!st) { /* derived from the content, so equal inputs and arguments give equal files */
        const widen_kernels *k = widen_kernels_for(widen_isa_active());
        widen_hash_state hs;
        k->hash_reset(&hs);
        k->hash_update(&hs, pickle.data, pickle.len);
        for (size_t i = 0; i < plan.count; i++) k->hash_update(&hs, &plan.tensors[i].out_hash, sizeof plan.tensors[i].out_hash);
        char id[33];
        widen_hash128_hex(k->hash_digest(&hs), id);
        st = small_record(&sink, ".data/serialization_id", id, err);
    }
    if (!st) {
        unsigned char *tail = NULL;
        size_t len = 0;
        st = widen_zip_finish(&zw, &tail, &len, err);
        if (!st) st = widen_write_all(fd, tail, len, target, err);
        free(tail);
    }
    widen_zip_writer_free(&zw);
    free(pickle.data);
    free(plan.tensors);
    free(plan.identity);
    free(views);
    free(w.outs);
    free(w.order);
    return st;
}
