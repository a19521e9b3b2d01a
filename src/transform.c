/* transform.c: channel maps and transforms: parsing, JSON form, and the plan they make of a file. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "internal.h"

widen_transform *widen_transform_new(void)
{
    return calloc(1, sizeof(widen_transform));
}

void widen_transform_free(widen_transform *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->count; i++) {
        free(t->edits[i].name);
        free(t->edits[i].map);
    }
    free(t->edits);
    widen_table_free(&t->by_name);
    free(t);
}

/* An fp32 number as strtof reads it (subnormals included: glibc flags them ERANGE but returns them),
 * or "bits:0xXXXXXXXX", the exact bits (how a NaN is recorded, payload and sign kept). Overflow and a
 * non-zero number that underflows to zero are refused. */
static widen_status parse_float(const char *text, float *out, const char *what, widen_error *err)
{
    char *end;
    if (strncmp(text, "bits:0x", 7) == 0) {
        errno = 0;
        unsigned long bits = strtoul(text + 7, &end, 16);
        if (!text[7] || *end || errno || bits > 0xffffffffu || text[7] == '-' || text[7] == '+')
            return widen_fail(err, WIDEN_EUSAGE, "%s: '%s' is not bits:0x and 8 hex digits", what, text);
        uint32_t u = (uint32_t)bits;
        memcpy(out, &u, sizeof u);
        return WIDEN_OK;
    }
    errno = 0;
    float v = strtof(text, &end);
    if (!*text || *end || (errno == ERANGE && (isinf(v) || v == 0)))
        return widen_fail(err, WIDEN_EUSAGE, "%s: '%s' is not an fp32 number", what, text);
    *out = v;
    return WIDEN_OK;
}

/* An fp32 number as text that parse_float reads back to the same bits: nine significant digits,
 * or the bits of a NaN. */
static void format_float(float v, char *out, size_t size)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if (isnan(v)) snprintf(out, size, "bits:0x%08x", (unsigned)u);
    else snprintf(out, size, "%.9g", (double)v);
}

/* normal:STD[:SEED] */
static widen_status parse_normal(const char *text, widen_map_entry *e, const char *what, widen_error *err)
{
    char std[64];
    const char *colon = strchr(text, ':');
    size_t len = colon ? (size_t)(colon - text) : strlen(text);
    if (len >= sizeof std) return widen_fail(err, WIDEN_EUSAGE, "%s: '%s' is not STD[:SEED]", what, text);
    memcpy(std, text, len);
    std[len] = '\0';
    e->kind = WIDEN_MAP_NORMAL;
    widen_status st = parse_float(std, &e->value, what, err);
    if (st) return st;
    if (!(e->value >= 0) || e->value == INFINITY)
        return widen_fail(err, WIDEN_EUSAGE, "%s: the standard deviation must be finite and >= 0", what);
    if (colon) {
        char *end;
        errno = 0;
        e->seed = strtoull(colon + 1, &end, 10);
        if (!colon[1] || *end || errno || colon[1] == '-')
            return widen_fail(err, WIDEN_EUSAGE, "%s: seed '%s' is not an integer from 0 to 2^64-1", what, colon + 1);
    }
    return WIDEN_OK;
}

/* One map entry; `kind` says what it is in messages ("map entry"), which name it with its text. */
static widen_status parse_entry(const char *text, widen_map_entry *e, const char *kind, widen_error *err)
{
    char what[160];
    snprintf(what, sizeof what, "%s '%.100s%s'", kind, text, strlen(text) > 100 ? "..." : "");
    memset(e, 0, sizeof *e);
    if (strcmp(text, "zero") == 0) {
        e->kind = WIDEN_MAP_ZERO;
        return WIDEN_OK;
    }
    if (strcmp(text, "mean") == 0 || strcmp(text, "sum") == 0) {
        e->kind = text[0] == 'm' ? WIDEN_MAP_MEAN : WIDEN_MAP_SUM;
        return WIDEN_OK;
    }
    if (strncmp(text, "const:", 6) == 0) {
        e->kind = WIDEN_MAP_CONST;
        return parse_float(text + 6, &e->value, what, err);
    }
    if (strncmp(text, "normal:", 7) == 0) return parse_normal(text + 7, e, what, err);
    if (*text >= '0' && *text <= '9') {
        char *end;
        errno = 0;
        unsigned long k = strtoul(text, &end, 10);
        if (errno == 0 && k <= UINT32_MAX && (!*end || *end == '*')) {
            e->kind = *end ? WIDEN_MAP_SCALE : WIDEN_MAP_SOURCE;
            e->channel = (uint32_t)k;
            return *end ? parse_float(end + 1, &e->value, what, err) : WIDEN_OK;
        }
    }
    return widen_fail(err, WIDEN_EUSAGE, "%s is not K, K*S, zero, const:V, mean, sum or normal:STD[:SEED]", what);
}

widen_status widen_parse_map(const char *list, widen_map_entry **entries, size_t *count, widen_error *err)
{
    if (!list || !entries || !count) return widen_fail(err, WIDEN_EUSAGE, "widen_parse_map needs a list and its outputs");
    *entries = NULL;
    *count = 0;
    size_t n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    widen_map_entry *m = calloc(n, sizeof *m);
    char *copy = strdup(list);
    if (!m || !copy) {
        free(m);
        free(copy);
        return widen_fail(err, WIDEN_EUSAGE, "out of memory");
    }
    widen_status st = WIDEN_OK;
    char *cursor = copy;
    for (size_t i = 0; i < n && !st; i++) {
        char *comma = strchr(cursor, ',');
        if (comma) *comma = '\0';
        st = parse_entry(cursor, &m[i], "map entry", err);
        cursor = comma ? comma + 1 : cursor + strlen(cursor);
    }
    free(copy);
    if (st) {
        free(m);
        return st;
    }
    *entries = m;
    *count = n;
    return WIDEN_OK;
}

widen_status widen_parse_init(const char *mode, widen_init *init, widen_error *err)
{
    if (!mode || !init) return widen_fail(err, WIDEN_EUSAGE, "widen_parse_init needs a mode and an init");
    memset(init, 0, sizeof *init);
    init->kind = WIDEN_INIT_FILL;
    if (strcmp(mode, "zeros") == 0) {
        init->fill.kind = WIDEN_MAP_ZERO;
        return WIDEN_OK;
    }
    if (strcmp(mode, "timm") == 0 || strcmp(mode, "cyclic") == 0) {
        init->kind = mode[0] == 't' ? WIDEN_INIT_TIMM : WIDEN_INIT_CYCLIC;
        return WIDEN_OK;
    }
    /* copy:K is the map entry K; const:V, mean and normal:STD[:SEED] are map entries as they are */
    if (strncmp(mode, "copy:", 5) == 0) {
        if (parse_entry(mode + 5, &init->fill, "init mode", err) || init->fill.kind != WIDEN_MAP_SOURCE)
            return widen_fail(err, WIDEN_EUSAGE, "init mode copy:K: '%s' is not a channel index", mode + 5);
        return WIDEN_OK;
    }
    if (strncmp(mode, "const:", 6) == 0 || strncmp(mode, "normal:", 7) == 0 || strcmp(mode, "mean") == 0)
        return parse_entry(mode, &init->fill, "init mode", err);
    return widen_fail(err, WIDEN_EUSAGE,
                      "unknown init mode '%s' (use zeros, const:V, mean, copy:K, normal:STD[:SEED], timm or cyclic)", mode);
}

widen_status widen_widen_map(uint32_t c, uint32_t n, uint32_t at, const widen_init *init, widen_map_entry *entries,
                             widen_error *err)
{
    if (!init || !entries) return widen_fail(err, WIDEN_EUSAGE, "widen_widen_map needs an init and its entries");
    if (init->kind != WIDEN_INIT_FILL) {
        if (c == 0) return widen_fail(err, WIDEN_EUSAGE, "init mode %s needs at least one input channel",
                                      init->kind == WIDEN_INIT_TIMM ? "timm" : "cyclic");
        /* timm's adapt_input_conv: the scale is C/N in double, applied as an fp32 number */
        float scale = (float)((double)c / (double)n);
        for (uint32_t i = 0; i < n; i++) {
            widen_map_entry e = {.kind = WIDEN_MAP_SOURCE, .channel = i % c};
            if (init->kind == WIDEN_INIT_TIMM) {
                if (n == 1) e = (widen_map_entry){.kind = WIDEN_MAP_SUM};
                else if (n != c) e.kind = WIDEN_MAP_SCALE, e.value = scale;
            }
            entries[i] = e;
        }
        return WIDEN_OK;
    }
    widen_map_entry fill = init->fill;
    if (n < c)
        return widen_fail(err, WIDEN_EUSAGE, "%u channels are fewer than the tensor's %u: widening does not narrow",
                          n, c);
    if (at > n - c)
        return widen_fail(err, WIDEN_EUSAGE, "%u channels starting at %u do not fit in %u", c, at, n);
    for (uint32_t i = 0; i < n; i++) {
        if (i >= at && i < at + c)
            entries[i] = (widen_map_entry){.kind = WIDEN_MAP_SOURCE, .channel = i - at};
        else
            entries[i] = fill;
    }
    return WIDEN_OK;
}

widen_status widen_transform_add_map(widen_transform *t, const char *name, int axis, const widen_map_entry *map,
                                     size_t count, widen_error *err)
{
    if (!t || !name || !map) return widen_fail(err, WIDEN_EUSAGE, "widen_transform_add_map needs a transform, a name and a map");
    if (axis < -WIDEN_MAX_RANK || axis >= WIDEN_MAX_RANK)
        return widen_fail(err, WIDEN_EUSAGE, "tensor '%s': axis %d is not an axis of any tensor", name, axis);
    if (widen_transform_edit(t, name))
        return widen_fail(err, WIDEN_EUSAGE, "tensor '%s' is selected twice", name);
    if (count == 0 || count > UINT32_MAX)
        return widen_fail(err, WIDEN_EUSAGE, "tensor '%s': a map needs 1 to 2^32-1 channels", name);
    widen_tensor_edit *grown = realloc(t->edits, (t->count + 1) * sizeof *grown);
    if (!grown) return widen_fail(err, WIDEN_EIO, "out of memory");
    t->edits = grown;
    widen_tensor_edit *e = &t->edits[t->count];
    e->name = strdup(name);
    e->map = malloc(count * sizeof *map);
    if (!e->name || !e->map) {
        free(e->name);
        free(e->map);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    memcpy(e->map, map, count * sizeof *map);
    e->count = count;
    e->axis = axis;
    if (widen_table_put(&t->by_name, e->name, strlen(e->name), t->count, NULL) < 0) {
        free(e->name);
        free(e->map);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    t->count++;
    return WIDEN_OK;
}

widen_status widen_transform_set_cast(widen_transform *t, widen_dtype to, widen_error *err)
{
    if (!t) return widen_fail(err, WIDEN_EUSAGE, "widen_transform_set_cast needs a transform");
    if (!widen_dtype_is_computable(to))
        return widen_fail(err, WIDEN_EUSAGE, "widen casts to F32, F16 or BF16, not %s",
                          widen_dtype_name(to) ? widen_dtype_name(to) : "?");
    t->cast = true;
    t->cast_to = to;
    return WIDEN_OK;
}

const widen_tensor_edit *widen_transform_edit(const widen_transform *t, const char *name)
{
    size_t index;
    return widen_table_get(&t->by_name, name, strlen(name), &index) ? &t->edits[index] : NULL;
}

void widen_map_entry_format(const widen_map_entry *e, char *out, size_t size)
{
    char v[32];
    format_float(e->value, v, sizeof v);
    switch (e->kind) {
    case WIDEN_MAP_SOURCE: snprintf(out, size, "%u", e->channel); break;
    case WIDEN_MAP_ZERO: snprintf(out, size, "zero"); break;
    case WIDEN_MAP_CONST: snprintf(out, size, "const:%s", v); break;
    case WIDEN_MAP_SCALE: snprintf(out, size, "%u*%s", e->channel, v); break;
    case WIDEN_MAP_MEAN: snprintf(out, size, "mean"); break;
    case WIDEN_MAP_SUM: snprintf(out, size, "sum"); break;
    case WIDEN_MAP_NORMAL: snprintf(out, size, "normal:%s:%llu", v, (unsigned long long)e->seed); break;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* JSON form: {"tool":"widen 0.1.0","cast":"F16"|null,"tensors":[{"name":..,"axis":1,"map":["0",..]}]} */

static char *to_json(const widen_transform *t, const char *tool)
{
    json_t *root = json_object(), *tensors = json_array();
    json_object_set_new(root, "tool", json_string(tool));
    json_object_set_new(root, "cast", t->cast ? json_string(widen_dtype_name(t->cast_to)) : json_null());
    for (size_t i = 0; i < t->count; i++) {
        const widen_tensor_edit *e = &t->edits[i];
        json_t *obj = json_object(), *map = json_array();
        for (size_t k = 0; k < e->count; k++) {
            char text[64];
            widen_map_entry_format(&e->map[k], text, sizeof text);
            json_array_append_new(map, json_string(text));
        }
        json_object_set_new(obj, "name", json_string(e->name));
        json_object_set_new(obj, "axis", json_integer(e->axis));
        json_object_set_new(obj, "map", map);
        json_array_append_new(tensors, obj);
    }
    json_object_set_new(root, "tensors", tensors);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

char *widen_transform_to_json(const widen_transform *t)
{
    if (!t) return NULL;
    return to_json(t, "widen " WIDEN_VERSION_STRING);
}

char *widen_transform_canonical(const widen_transform *t, const char *recorded)
{
    json_t *root = json_loads(recorded, 0, NULL);
    const char *tool = json_string_value(json_object_get(root, "tool"));
    int ok = tool && strncmp(tool, "widen ", 6) == 0 && strlen(tool) < 48 && strlen(tool) > 6;
    for (const char *c = tool ? tool + 6 : ""; ok && *c; c++)
        ok = (*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || strchr(".+-_~", *c);
    char *text = to_json(t, ok ? tool : "widen " WIDEN_VERSION_STRING);
    json_decref(root);
    return text;
}

widen_status widen_transform_from_json(const char *text, widen_transform **out, widen_error *err)
{
    if (!text || !out) return widen_fail(err, WIDEN_EUSAGE, "widen_transform_from_json needs a text and an output");
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root) return widen_fail(err, WIDEN_EFORMAT, "recorded transform is not valid JSON: %s", jerr.text);
    widen_transform *t = widen_transform_new();
    widen_status st = t ? WIDEN_OK : widen_fail(err, WIDEN_EIO, "out of memory");
    json_t *cast = json_object_get(root, "cast"), *tensors = json_object_get(root, "tensors");
    if (!st && !json_is_array(tensors))
        st = widen_fail(err, WIDEN_EFORMAT, "recorded transform has no \"tensors\" list");
    if (!st && cast && !json_is_null(cast)) {
        widen_dtype to;
        if (!json_is_string(cast) || widen_dtype_from_name(json_string_value(cast), &to) != 0)
            st = widen_fail(err, WIDEN_EFORMAT, "recorded transform has an unknown cast");
        else
            st = widen_transform_set_cast(t, to, err);
    }
    size_t i;
    json_t *obj;
    if (!st) json_array_foreach(tensors, i, obj) {
        json_t *name = json_object_get(obj, "name"), *axis = json_object_get(obj, "axis"),
               *map = json_object_get(obj, "map");
        if (!json_is_string(name) || !json_is_integer(axis) || !json_is_array(map) || json_array_size(map) == 0) {
            st = widen_fail(err, WIDEN_EFORMAT, "recorded transform: tensor entry %zu lacks name, axis or map", i);
            break;
        }
        if (json_integer_value(axis) < -WIDEN_MAX_RANK || json_integer_value(axis) >= WIDEN_MAX_RANK) {
            st = widen_fail(err, WIDEN_EFORMAT, "recorded transform: tensor entry %zu has axis %lld", i,
                            (long long)json_integer_value(axis));
            break;
        }
        size_t n = json_array_size(map), k;
        json_t *item;
        widen_map_entry *entries = calloc(n, sizeof *entries);
        if (!entries) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            break;
        }
        json_array_foreach(map, k, item) {
            if (!json_is_string(item)) {
                st = widen_fail(err, WIDEN_EFORMAT, "recorded transform: map entries must be strings");
                break;
            }
            if ((st = parse_entry(json_string_value(item), &entries[k], "recorded transform: map entry", err))) {
                st = WIDEN_EFORMAT;
                if (err) err->status = st;
                break;
            }
        }
        if (!st)
            st = widen_transform_add_map(t, json_string_value(name), (int)json_integer_value(axis), entries, n, err);
        free(entries);
        if (st && st != WIDEN_EIO) { /* a recorded transform that cannot be is a malformed file */
            st = WIDEN_EFORMAT;
            if (err) err->status = st;
        }
        if (st) break;
    }
    json_decref(root);
    if (st) {
        widen_transform_free(t);
        return st;
    }
    *out = t;
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Plans                                                                                            */

static int by_write_order(const void *a, const void *b)
{
    const widen_plan_tensor *x = a, *y = b;
    int rx = widen_dtype_write_rank(x->dtype), ry = widen_dtype_write_rank(y->dtype);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

/* The largest output a map may fill from a tensor with no input channels on its axis (nothing to
 * copy, so nothing in the file bounds it). */
#define FILL_FROM_NOTHING (64ull << 20)

static widen_status plan_remap(const widen_checkpoint *c, const widen_tensor_edit *e, widen_plan_tensor *p,
                               widen_error *err)
{
    const widen_tensor_info *t = p->in;
    int axis = e->axis < 0 ? e->axis + t->rank : e->axis;
    if (axis < 0 || axis >= t->rank)
        return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' has rank %d: no axis %d", c->path, t->name, t->rank,
                          e->axis);
    unsigned bits = widen_dtype_bits(t->dtype);
    if (bits % 8 || bits > 64)
        return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s': %s elements cannot be remapped", c->path, t->name,
                          widen_dtype_name(t->dtype));
    uint64_t channels = t->shape[axis];
    for (size_t k = 0; k < e->count; k++) {
        const widen_map_entry *m = &e->map[k];
        if ((m->kind == WIDEN_MAP_SOURCE || m->kind == WIDEN_MAP_SCALE) && m->channel >= channels)
            return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' has %llu channels on axis %d: no channel %u", c->path,
                              t->name, (unsigned long long)channels, axis, m->channel);
        char text[64];
        widen_map_entry_format(m, text, sizeof text);
        if (m->kind > WIDEN_MAP_ZERO && !widen_dtype_is_computable(t->dtype))
            return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' is %s: '%s' needs an F32, F16 or BF16 tensor", c->path,
                              t->name, widen_dtype_name(t->dtype), text);
        if ((m->kind == WIDEN_MAP_MEAN || m->kind == WIDEN_MAP_SUM) && channels == 0)
            return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s' has no channels on axis %d to take the %s of", c->path,
                              t->name, axis, text);
    }
    p->op = WIDEN_OP_REMAP;
    p->axis = axis;
    p->map = e->map;
    p->in_channels = channels;
    p->channels = e->count;
    p->shape[axis] = e->count;
    /* outer and inner: the products before and after the axis. With a zero anywhere but the axis
     * the output is as empty as the input, and no row is walked (a [2^60, 3, 0] tensor has 2^60
     * empty rows); products that overflow are then meaningless, not errors. */
    int empty = 0;
    for (int d = 0; d < t->rank; d++) empty |= d != axis && t->shape[d] == 0;
    p->outer = 1;
    p->inner = 1;
    uint64_t elements;
    int overflow = 0;
    for (int d = 0; d < axis; d++) overflow |= __builtin_mul_overflow(p->outer, t->shape[d], &p->outer);
    for (int d = axis + 1; d < t->rank; d++) overflow |= __builtin_mul_overflow(p->inner, t->shape[d], &p->inner);
    if (empty) {
        p->outer = p->inner = 0;
        p->nbytes = 0;
        return WIDEN_OK;
    }
    if (overflow || __builtin_mul_overflow(p->outer, (uint64_t)e->count, &elements) ||
        __builtin_mul_overflow(elements, p->inner, &elements) ||
        __builtin_mul_overflow(elements, (uint64_t)widen_dtype_bits(p->dtype) / 8, &p->nbytes))
        return widen_fail(err, WIDEN_EUSAGE, "%s: tensor '%s': the output would be too large", c->path, t->name);
    if (channels == 0 && p->nbytes > FILL_FROM_NOTHING)
        return widen_fail(err, WIDEN_EFORMAT, "%s: tensor '%s' has no channels on axis %d but %llu rows of them: "
                          "filling it would write %llu bytes from nothing (widen fills at most %llu MiB so)", c->path,
                          t->name, axis, (unsigned long long)(p->outer * p->inner), (unsigned long long)p->nbytes,
                          FILL_FROM_NOTHING >> 20);
    return WIDEN_OK;
}

widen_status widen_plan_build(const widen_checkpoint *c, const widen_transform *tr, widen_plan *plan,
                              widen_error *err)
{
    memset(plan, 0, sizeof *plan);
    widen_status st = widen_checkpoint_check_work(c, err);
    if (st) return st;
    const widen_tensor_edit **edit_of = calloc(c->count + 1, sizeof *edit_of);
    plan->tensors = calloc(c->count + 1, sizeof *plan->tensors);
    plan->identity = calloc(1, sizeof *plan->identity);
    if (!edit_of || !plan->tensors || !plan->identity) {
        free(edit_of);
        widen_plan_free(plan);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    for (size_t i = 0; i < tr->count; i++) {
        long k = widen_tensor_find(c, tr->edits[i].name);
        if (k < 0) {
            free(edit_of);
            widen_plan_free(plan);
            return widen_fail(err, WIDEN_EUSAGE, "%s: no tensor named '%s'", c->path, tr->edits[i].name);
        }
        edit_of[k] = &tr->edits[i];
    }
    plan->identity->kind = WIDEN_MAP_SOURCE;
    for (size_t i = 0; i < c->count; i++) {
        const widen_tensor_info *t = &c->tensors[i];
        widen_plan_tensor *p = &plan->tensors[i];
        p->in = t;
        p->name = t->name;
        p->op = WIDEN_OP_COPY;
        p->dtype = t->dtype;
        p->rank = t->rank;
        memcpy(p->shape, t->shape, sizeof p->shape);
        p->axis = -1;
        p->strided = widen_tensor_strided(c, i);
        /* a strided tensor's output is its elements in row-major order (the executor gathers them) */
        p->nbytes = p->strided ? widen_tensor_elements(c, i) * (widen_dtype_bits(t->dtype) / 8) : t->nbytes;
        /* a remapped tensor gets a storage of its own, so it can always be cast */
        const widen_tensor_edit *e = edit_of[i];
        bool cast = tr->cast && widen_dtype_is_computable(t->dtype) && t->dtype != tr->cast_to &&
                    (e || widen_tensor_castable(c, i));
        if (cast) p->dtype = tr->cast_to;
        if (e) {
            if ((st = plan_remap(c, e, p, err))) {
                free(edit_of);
                widen_plan_free(plan);
                return st;
            }
        } else if (cast) {
            p->op = WIDEN_OP_REMAP;
            p->map = plan->identity;
            p->in_channels = p->channels = 1;
            p->outer = 1;
            p->inner = p->nbytes / (widen_dtype_bits(t->dtype) / 8); /* the elements, gathered if strided */
            p->nbytes = p->inner * (widen_dtype_bits(p->dtype) / 8);
        }
        plan->data_bytes += p->nbytes;
    }
    free(edit_of);
    plan->count = c->count;
    qsort(plan->tensors, plan->count, sizeof *plan->tensors, by_write_order);
    return WIDEN_OK;
}

void widen_plan_free(widen_plan *plan)
{
    free(plan->tensors);
    free(plan->identity);
    memset(plan, 0, sizeof *plan);
}
