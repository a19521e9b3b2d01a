/* verify.c: proves an output is its input with the recorded transform applied, by replaying the
 * plan through the scalar reference kernels and comparing every byte. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct compare_sink {
    const widen_checkpoint *out;
    const widen_plan *plan;
    const widen_tensor_info **targets; /* per plan tensor: the output tensor to compare, or NULL */
    widen_verify_report *report;
} compare_sink;

static void difference(widen_verify_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void difference(widen_verify_report *r, const char *fmt, ...)
{
    if (r->differences++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->first, sizeof r->first, fmt, ap);
        va_end(ap);
    }
}

/* Where element `e` of a remapped output comes from, in words. */
static void describe(const widen_plan_tensor *p, uint64_t e, char *out, size_t size)
{
    if (p->op == WIDEN_OP_COPY) {
        snprintf(out, size, "byte %llu differs from the input", (unsigned long long)e);
        return;
    }
    if (p->axis < 0) {
        snprintf(out, size, "element %llu is not the input's element cast from %s to %s", (unsigned long long)e,
                 widen_dtype_name(p->in->dtype), widen_dtype_name(p->dtype));
        return;
    }
    uint64_t inner = p->inner ? p->inner : 1;
    uint32_t n = (uint32_t)((e / inner) % p->channels);
    char entry[64];
    widen_map_entry_format(&p->map[n], entry, sizeof entry);
    if (p->map[n].kind == WIDEN_MAP_SOURCE)
        snprintf(out, size, "output channel %u (axis %d) is not a copy of input channel %s (first at element %llu)", n,
                 p->axis, entry, (unsigned long long)e);
    else
        snprintf(out, size, "output channel %u (axis %d) does not hold the fill %s (first at element %llu)", n, p->axis,
                 entry, (unsigned long long)e);
}

static widen_status sink_compare(void *user, size_t index, uint64_t offset, const void *data, size_t len,
                                 widen_error *err)
{
    (void)err;
    compare_sink *c = user;
    const widen_tensor_info *t = c->targets[index];
    if (!t) return WIDEN_OK;
    const unsigned char *have = c->out->map + t->offset + offset, *want = data;
    if (memcmp(have, want, len) != 0) {
        const widen_plan_tensor *p = &c->plan->tensors[index];
        size_t k = 0;
        while (have[k] == want[k]) k++;
        unsigned esize = p->op == WIDEN_OP_COPY ? 1 : widen_dtype_bits(p->dtype) / 8;
        char what[512];
        describe(p, (offset + k) / esize, what, sizeof what);
        difference(c->report, "%s: tensor '%s': %s", c->out->path, p->name, what);
        c->targets[index] = NULL; /* one report per tensor */
    }
    widen_release(c->out, t->offset + offset, len);
    return WIDEN_OK;
}

static int same_shape(const widen_plan_tensor *p, const widen_tensor_info *t)
{
    return p->dtype == t->dtype && p->rank == t->rank && memcmp(p->shape, t->shape, sizeof(uint64_t) * (size_t)t->rank) == 0;
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

/* Output metadata = input metadata, apart from the provenance key. */
static void compare_metadata(const widen_checkpoint *in, const widen_checkpoint *out, widen_verify_report *r)
{
    for (size_t i = 0; i < in->metadata_count; i++) {
        const char *k = in->metadata[i].key, *v = metadata_get(out, k);
        if (strcmp(k, WIDEN_PROVENANCE_KEY) == 0) continue;
        if (!v || strcmp(v, in->metadata[i].value) != 0)
            difference(r, "%s: metadata key '%s' %s", out->path, k, v ? "differs from the input" : "is missing");
    }
    for (size_t i = 0; i < out->metadata_count; i++) {
        const char *k = out->metadata[i].key;
        if (strcmp(k, WIDEN_PROVENANCE_KEY) != 0 && !metadata_get(in, k))
            difference(r, "%s: metadata key '%s' is not in the input", out->path, k);
    }
}

static json_t *load_manifest(const char *path, widen_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
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

static void check_manifest_hashes(json_t *manifest, const char *path, const widen_plan *plan, widen_verify_report *r)
{
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(manifest, "tensors"), i, item) {
        const char *name = json_string_value(json_object_get(item, "name"));
        const widen_plan_tensor *p = NULL;
        for (size_t k = 0; name && k < plan->count; k++)
            if (strcmp(plan->tensors[k].name, name) == 0) p = &plan->tensors[k];
        if (!p) {
            difference(r, "%s: manifest lists tensor '%s', which the input lacks", path, name ? name : "?");
            continue;
        }
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
}

/* An output tensor stored strided (.pt) is not one run of bytes: its elements, in row-major order,
 * are hashed and compared with the hash of what the executor produced for it (strided_out[i] holds
 * its index in the output, or -1). */
static widen_status compare_strided(const widen_checkpoint *out, const widen_plan *plan, const long *strided_out,
                                    widen_verify_report *r, widen_error *err)
{
    for (size_t i = 0; i < plan->count; i++) {
        if (strided_out[i] < 0) continue;
        const widen_plan_tensor *p = &plan->tensors[i];
        widen_hash128 have;
        widen_status st = widen_tensor_hash_strided(out, (size_t)strided_out[i], &have, err);
        if (st) return st;
        if (memcmp(&have, &p->out_hash, sizeof have) != 0)
            difference(r, "%s: tensor '%s' (strided) differs from the input", out->path, p->name);
    }
    return WIDEN_OK;
}

widen_status widen_verify(const char *input, const char *output, const char *manifest_path,
                          widen_verify_report *report, widen_error *err)
{
    memset(report, 0, sizeof *report);
    widen_checkpoint *in = NULL, *out = NULL;
    widen_transform *tr = NULL;
    json_t *manifest = NULL;
    const widen_tensor_info **targets = NULL;
    long *strided_out = NULL;
    widen_plan plan = {0};
    widen_status st;
    if ((st = widen_open(input, &in, err)) || (st = widen_open(output, &out, err))) goto done;
    if (manifest_path) {
        if (!(manifest = load_manifest(manifest_path, err))) {
            st = err ? err->status : WIDEN_EFORMAT;
            goto done;
        }
        char *text = json_dumps(json_object_get(manifest, "transform"), JSON_COMPACT);
        st = text ? widen_transform_from_json(text, &tr, err) : widen_fail(err, WIDEN_EIO, "out of memory");
        free(text);
    } else {
        const char *recorded = metadata_get(out, WIDEN_PROVENANCE_KEY);
        if (!recorded) {
            st = widen_fail(err, WIDEN_EUSAGE, "%s: no transform recorded (no '%s' metadata key): pass --manifest FILE",
                            output, WIDEN_PROVENANCE_KEY);
            goto done;
        }
        st = widen_transform_from_json(recorded, &tr, err);
    }
    if (st) goto done;
    if ((st = widen_plan_build(in, tr, &plan, err))) goto done;
    targets = calloc(plan.count + 1, sizeof *targets);
    strided_out = malloc((plan.count + 1) * sizeof *strided_out);
    if (!targets || !strided_out) {
        st = widen_fail(err, WIDEN_EIO, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < plan.count; i++) {
        const widen_plan_tensor *p = &plan.tensors[i];
        long k = widen_tensor_find(out, p->name);
        strided_out[i] = -1;
        char want[256], have[256];
        if (k < 0) {
            difference(report, "%s: tensor '%s' is missing", output, p->name);
            continue;
        }
        const widen_tensor_info *t = widen_tensor_at(out, (size_t)k);
        if (!same_shape(p, t)) {
            shape_text(p->rank, p->shape, want, sizeof want);
            shape_text(t->rank, t->shape, have, sizeof have);
            difference(report, "%s: tensor '%s' is %s %s, expected %s %s", output, p->name, widen_dtype_name(t->dtype),
                       have, widen_dtype_name(p->dtype), want);
            continue;
        }
        /* a strided output tensor is not one run of bytes: compare_strided checks it */
        if (widen_tensor_strided(out, (size_t)k)) strided_out[i] = k;
        else targets[i] = t;
        report->tensors++;
        if (p->op != WIDEN_OP_COPY) report->transformed++;
    }
    for (size_t k = 0; k < out->count; k++)
        if (widen_tensor_find(in, out->tensors[k].name) < 0)
            difference(report, "%s: tensor '%s' is not in the input", output, out->tensors[k].name);
    if (strcmp(in->format, "safetensors") == 0 && strcmp(out->format, "safetensors") == 0)
        compare_metadata(in, out, report); /* a .pt file has no metadata to compare */
    compare_sink cs = {.out = out, .plan = &plan, .targets = targets, .report = report};
    widen_exec_options eo = {.threads = 1, .isa = WIDEN_ISA_SCALAR};
    if ((st = widen_execute(in, &plan, &eo, sink_compare, &cs, err))) goto done;
    if ((st = compare_strided(out, &plan, strided_out, report, err))) goto done;
    if (manifest) check_manifest_hashes(manifest, manifest_path, &plan, report);
    st = report->differences ? WIDEN_DIFFERENT : WIDEN_OK;
done:
    free(targets);
    free(strided_out);
    widen_plan_free(&plan);
    widen_transform_free(tr);
    json_decref(manifest);
    widen_close(in);
    widen_close(out);
    return st;
}
