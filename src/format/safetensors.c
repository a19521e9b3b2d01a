/* safetensors.c: the safetensors header: a reader that enforces every rule of the reference reader,
 * and a writer that lays out what the reference writer lays out. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../dtype.h"
#include "../internal.h"

#define MAX_HEADER 100000000ull

static int by_offsets(const void *a, const void *b)
{
    const widen_tensor_info *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* A JSON integer that fits 0..2^63-1. */
static int json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static widen_status parse_tensor(widen_checkpoint *c, const char *name, json_t *v, uint64_t data_start,
                                 widen_tensor_info *t, widen_error *err)
{
    const char *p = c->path;
    if (!json_is_object(v))
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' is not a JSON object", p, name);
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has no dtype string", p, name);
    if (widen_dtype_from_name(json_string_value(dt), &t->dtype) != 0)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has unknown dtype '%s'", p,
                          name, json_string_value(dt));
    if (!json_is_array(shape))
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has no shape array", p, name);
    if (json_array_size(shape) > WIDEN_MAX_RANK)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has rank %zu (widen reads up to %d)",
                          p, name, json_array_size(shape), WIDEN_MAX_RANK);
    t->rank = (int)json_array_size(shape);
    uint64_t count = 1;
    for (int i = 0; i < t->rank; i++) {
        if (json_u64(json_array_get(shape, (size_t)i), &t->shape[i]) != 0)
            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': shape entries must be "
                              "non-negative integers", p, name);
        if (t->shape[i] && count > UINT64_MAX / t->shape[i])
            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': element count overflows", p, name);
        count *= t->shape[i];
    }
    unsigned bits = widen_dtype_bits(t->dtype);
    if (count > UINT64_MAX / bits)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': byte size overflows", p, name);
    if (count * bits % 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': %llu %s elements are not a whole "
                          "number of bytes", p, name, (unsigned long long)count, widen_dtype_name(t->dtype));
    uint64_t begin, end;
    if (!json_is_array(offs) || json_array_size(offs) != 2 || json_u64(json_array_get(offs, 0), &begin) ||
        json_u64(json_array_get(offs, 1), &end))
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets must be two "
                          "non-negative integers", p, name);
    if (end < begin)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets [%llu, %llu] end "
                          "before they begin", p, name, (unsigned long long)begin, (unsigned long long)end);
    if (end - begin != count * bits / 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets [%llu, %llu] hold "
                          "%llu bytes but %s with %llu elements needs %llu", p, name, (unsigned long long)begin,
                          (unsigned long long)end, (unsigned long long)(end - begin), widen_dtype_name(t->dtype),
                          (unsigned long long)count, (unsigned long long)(count * bits / 8));
    if (begin > c->size - data_start)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' starts past the end of the file",
                          p, name);
    t->offset = data_start + begin;
    t->nbytes = end - begin;
    return WIDEN_OK;
}

static widen_status parse_metadata(widen_checkpoint *c, json_t *meta, widen_error *err)
{
    if (!json_is_object(meta))
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: __metadata__ is not an object", c->path);
    c->metadata = calloc(json_object_size(meta) + 1, sizeof *c->metadata);
    if (!c->metadata) return widen_fail(err, WIDEN_EIO, "out of memory");
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: __metadata__ value of '%s' is not a string",
                              c->path, key);
        widen_metadata_entry *e = &c->metadata[c->metadata_count];
        e->key = strdup(key);
        e->value = strdup(json_string_value(value));
        if (!e->key || !e->value) {
            free(e->key);
            free(e->value);
            return widen_fail(err, WIDEN_EIO, "out of memory");
        }
        c->metadata_count++;
    }
    return WIDEN_OK;
}

widen_status widen_safetensors_read(widen_checkpoint *c, widen_error *err)
{
    const char *p = c->path;
    if (c->size < 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a safetensors file: %llu bytes, shorter than the 8-byte header "
                          "length", p, (unsigned long long)c->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | c->map[i];
    if (n > MAX_HEADER)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a safetensors file: header length %llu is over the 100,000,000 "
                          "limit", p, (unsigned long long)n);
    if (n > c->size - 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a safetensors file: header length %llu runs past the end of the "
                          "%llu-byte file", p, (unsigned long long)n, (unsigned long long)c->size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)c->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header is not valid JSON: %s (at byte %d)", p, jerr.text,
                          jerr.position);
    widen_status st = WIDEN_OK;
    if (!json_is_object(root)) {
        st = widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header is not a JSON object", p);
        goto done;
    }
    size_t entries = json_object_size(root);
    c->tensors = calloc(entries + 1, sizeof *c->tensors);
    c->names = calloc(entries + 1, sizeof *c->names);
    if (!c->tensors || !c->names) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            st = parse_metadata(c, value, err);
        } else {
            widen_tensor_info *t = &c->tensors[c->count];
            st = parse_tensor(c, key, value, 8 + n, t, err);
            if (!st && !(c->names[c->count] = strdup(key))) st = widen_fail(err, WIDEN_EIO, "out of memory");
            if (!st) t->name = c->names[c->count++];
        }
        if (st) goto done;
    }
    /* The names travel with their tensors: sort an index, then both arrays. */
    qsort(c->tensors, c->count, sizeof *c->tensors, by_offsets);
    for (size_t i = 0; i < c->count; i++) c->names[i] = (char *)c->tensors[i].name;
    uint64_t expect = 8 + n;
    for (size_t i = 0; i < c->count; i++) {
        const widen_tensor_info *t = &c->tensors[i];
        if (t->offset != expect) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' begins at data offset %llu, "
                            "expected %llu (%s)", p, t->name, (unsigned long long)(t->offset - 8 - n),
                            (unsigned long long)(expect - 8 - n), t->offset > expect ? "a gap" : "an overlap");
            goto done;
        }
        expect = t->offset + t->nbytes;
    }
    if (expect != c->size) {
        st = widen_fail(err, WIDEN_EFORMAT, "%s: safetensors data ends at byte %llu but the file has %llu bytes (%s)",
                        p, (unsigned long long)expect, (unsigned long long)c->size,
                        expect < c->size ? "trailing bytes" : "truncated");
        goto done;
    }
done:
    json_decref(root);
    return st;
}

/* ---------------------------------------------------------------------------------------------- */

widen_status widen_safetensors_header(const widen_plan *plan, const widen_checkpoint *in,
                                      const char *provenance, unsigned char **header, size_t *len,
                                      widen_error *err)
{
    json_t *root = json_object();
    widen_status st = WIDEN_OK;
    if (!root) return widen_fail(err, WIDEN_EIO, "out of memory");
    int from_pt = strcmp(in->format, "pt") == 0;
    if (in->metadata_count || provenance || from_pt) {
        json_t *meta = json_object();
        /* what safetensors.torch.save_file writes, and Hugging Face transformers requires */
        if (from_pt) json_object_set_new(meta, "format", json_string("pt"));
        for (size_t i = 0; i < in->metadata_count; i++)
            if (strcmp(in->metadata[i].key, WIDEN_PROVENANCE_KEY) != 0)
                json_object_set_new(meta, in->metadata[i].key, json_string(in->metadata[i].value));
        if (provenance) json_object_set_new(meta, WIDEN_PROVENANCE_KEY, json_string(provenance));
        json_object_set_new(root, "__metadata__", meta);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const widen_plan_tensor *t = &plan->tensors[i];
        json_t *shape = json_array(), *offs = json_array(), *entry = json_object();
        for (int d = 0; d < t->rank; d++) json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)offset));
        json_array_append_new(offs, json_integer((json_int_t)(offset + t->nbytes)));
        json_object_set_new(entry, "dtype", json_string(widen_dtype_name(t->dtype)));
        json_object_set_new(entry, "shape", shape);
        json_object_set_new(entry, "data_offsets", offs);
        json_object_set_new(root, t->name, entry);
        offset += t->nbytes;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) return widen_fail(err, WIDEN_EIO, "out of memory");
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
    unsigned char *h = malloc(8 + padded);
    if (!h) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
    } else {
        for (int b = 0; b < 8; b++) h[b] = (unsigned char)((uint64_t)padded >> (8 * b));
        memcpy(h + 8, text, tl);
        memset(h + 8 + tl, ' ', padded - tl);
        *header = h;
        *len = 8 + padded;
    }
    free(text);
    return st;
}
