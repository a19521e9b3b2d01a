/* model_apply.c: apply and verify for models. A folder is planned file by file, the same way for
 * both: each weight file is rewritten (one file's apply with its share of the transform) or copied;
 * the index gets its new total and shard names; configs that declare the input layer follow it;
 * every other file is copied. apply carries the plan out into a temporary folder renamed into place;
 * verify checks the output folder against it, file by file, and that nothing is extra or missing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apply.h"
#include "model.h"

typedef enum plan_op {
    PLAN_COPY,    /* bytes of an input file */
    PLAN_REWRITE, /* a weight file through one file's apply */
    PLAN_DOC      /* a document (index, config) with edits */
} plan_op;

typedef struct plan_file {
    plan_op op;
    const char *in_rel;       /* the input file's path in the folder */
    char *out_rel;
    size_t part;              /* weight files: index in the model's files, else SIZE_MAX */
    widen_transform *share;   /* PLAN_REWRITE: the transform of this file's tensors, with its names */
    const char *format;       /* PLAN_REWRITE: the output format */
    const widen_model_doc *doc; /* PLAN_DOC */
    size_t component;         /* PLAN_DOC: the index's component, or SIZE_MAX for a config */
    widen_json_edits edits;
    widen_apply_record record; /* PLAN_REWRITE: the sizes it wrote */
    uint64_t verify_share;     /* verify: its part of the progress */
} plan_file;

typedef struct folder_plan {
    plan_file *files;
    size_t count;
    size_t rewritten;
} folder_plan;

static void plan_free(folder_plan *p)
{
    for (size_t i = 0; i < p->count; i++) {
        free(p->files[i].out_rel);
        widen_transform_free(p->files[i].share);
        widen_json_edits_free(&p->files[i].edits);
    }
    free(p->files);
    memset(p, 0, sizeof *p);
}

static plan_file *plan_add(folder_plan *p, plan_op op, const char *in_rel, const char *out_rel)
{
    plan_file *grown = realloc(p->files, (p->count + 1) * sizeof *grown);
    if (!grown) return NULL;
    p->files = grown;
    plan_file *f = &p->files[p->count];
    memset(f, 0, sizeof *f);
    f->op = op;
    f->in_rel = in_rel;
    f->part = f->component = SIZE_MAX;
    if (!(f->out_rel = strdup(out_rel))) return NULL;
    p->count++;
    return f;
}

#define join widen_path_join

/* ---------------------------------------------------------------------------------------------- */
/* Configs follow the input layer                                                                   */

static void warn(const widen_apply_options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void warn(const widen_apply_options *o, const char *fmt, ...)
{
    if (!o || !o->warning) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    widen_escape(line, sizeof line);
    o->warning(o->warning_user, line);
}

static int same_map(const widen_tensor_edit *a, const widen_tensor_edit *b)
{
    if (a->count != b->count) return 0;
    for (size_t i = 0; i < a->count; i++) {
        const widen_map_entry *x = &a->map[i], *y = &b->map[i];
        if (x->kind != y->kind || x->channel != y->channel || memcmp(&x->value, &y->value, sizeof x->value) != 0 ||
            x->seed != y->seed)
            return 0;
    }
    return 1;
}

/* The input channel a new channel takes its statistics from, or -1 for a new channel. */
static long stat_source(const widen_map_entry *e)
{
    return e->kind == WIDEN_MAP_SOURCE || e->kind == WIDEN_MAP_SCALE ? (long)e->channel : -1;
}

/* A per-channel list of c numbers rewritten for the map: kept channels keep their text, new ones
 * get `fill` (the option's, else the mean of the old values), in the list's own layout. */
static int remap_list(const widen_json *j, size_t node, const widen_tensor_edit *edit, uint64_t c, int have_fill,
                      double fill, widen_json_edits *edits)
{
    const widen_json_node *list = &j->nodes[node];
    if (list->kind != WJ_ARRAY || list->count != c || c == 0) return 0;
    size_t items[4096];
    if (c > 4096) return 0;
    double sum = 0;
    size_t k = 0;
    for (size_t it = list->first; it != WJ_NONE; it = j->nodes[it].next) {
        if (j->nodes[it].kind != WJ_NUMBER) return 0;
        sum += j->nodes[it].number;
        items[k++] = it;
    }
    if (!have_fill) fill = sum / (double)c;
    const char *t = j->text;
    size_t first = items[0], last = items[c - 1];
    /* the layout: what comes before the first item, between items, after the last */
    widen_text sep = {0};
    if (c >= 2) {
        widen_text_add(&sep, t + j->nodes[items[0]].end, j->nodes[items[1]].start - j->nodes[items[0]].end);
    } else {
        widen_text_puts(&sep, ",");
        widen_text_add(&sep, t + list->start + 1, j->nodes[first].start - list->start - 1);
    }
    widen_text out = {0};
    widen_text_add(&out, t + list->start, j->nodes[first].start - list->start);
    char number[40];
    for (size_t n = 0; n < edit->count; n++) {
        if (n) widen_text_add(&out, sep.data ? sep.data : "", sep.len);
        long s = stat_source(&edit->map[n]);
        if (s >= 0 && (uint64_t)s < c) {
            const widen_json_node *src = &j->nodes[items[s]];
            widen_text_add(&out, t + src->start, src->end - src->start);
        } else {
            widen_json_format_double(fill, number);
            widen_text_puts(&out, number);
        }
    }
    widen_text_add(&out, t + j->nodes[last].end, list->end - j->nodes[last].end);
    if (sep.failed) out.failed = 1;
    free(sep.data);
    if (out.failed) {
        free(out.data);
        edits->failed = 1;
        return 1;
    }
    widen_json_replace(edits, list->start, list->end, out.data);
    free(out.data);
    return 1;
}

/* Inserts member "key": value at the end of object `obj`, in the object's layout. */
static void insert_member(const widen_json *j, size_t obj, const char *key, const char *value, widen_json_edits *edits)
{
    const widen_json_node *o = &j->nodes[obj];
    widen_text out = {0};
    if (o->first == WJ_NONE) {
        widen_text_puts(&out, "\"");
        widen_text_puts(&out, key);
        widen_text_puts(&out, "\": ");
        widen_text_puts(&out, value);
        widen_json_replace(edits, o->start + 1, o->end - 1, out.data ? out.data : "");
    } else {
        size_t last = o->first;
        while (j->nodes[last].next != WJ_NONE) last = j->nodes[last].next;
        widen_text_puts(&out, ",");
        widen_text_add(&out, j->text + o->start + 1, j->nodes[o->first].key_start - o->start - 1);
        widen_text_puts(&out, "\"");
        widen_text_puts(&out, key);
        widen_text_puts(&out, "\": ");
        widen_text_puts(&out, value);
        widen_json_replace(edits, j->nodes[last].end, j->nodes[last].end, out.data ? out.data : "");
    }
    if (out.failed) edits->failed = 1;
    free(out.data);
}

static int mentions_channels(const char *key, size_t len)
{
    char lower[128];
    if (len >= sizeof lower) return 0;
    for (size_t i = 0; i < len; i++) lower[i] = (char)(key[i] >= 'A' && key[i] <= 'Z' ? key[i] + 32 : key[i]);
    lower[len] = '\0';
    return strstr(lower, "channel") || strstr(lower, "chans");
}

/* Keys of a config that mention channels and were not edited, listed into `out`. */
static void other_mentions(const widen_json *j, size_t node, const char *path, const size_t *edited, size_t n_edited,
                           double channels, char *out, size_t size, int depth)
{
    if (depth > 8) return;
    for (size_t c = j->nodes[node].first; c != WJ_NONE; c = j->nodes[c].next) {
        const widen_json_node *v = &j->nodes[c];
        char here[256];
        if (j->nodes[node].kind == WJ_OBJECT) snprintf(here, sizeof here, "%s%s%.100s", path, *path ? "." : "", v->key);
        else continue;
        int skip = 0;
        for (size_t e = 0; e < n_edited; e++) skip |= edited[e] == c || (v->kind == WJ_ARRAY && edited[e] == v->first);
        /* a count of channels equal to the layer's old one: what a reader might expect to follow */
        if (!skip && mentions_channels(v->key, v->key_len) && v->kind == WJ_NUMBER && v->number == channels) {
            size_t used = strlen(out);
            if (used + strlen(here) + 4 < size) snprintf(out + used, size - used, "%s%s", used ? ", " : "", here);
        }
        if (v->kind == WJ_OBJECT) other_mentions(j, c, here, edited, n_edited, channels, out, size, depth + 1);
    }
}

/* A transformers config (it names its model_type), which builds num_channels = 3 where it says none. */
static int transformers_config(const widen_model_doc *d)
{
    size_t t = d->rel ? widen_json_get(&d->json, 0, "model_type") : WJ_NONE;
    return t != WJ_NONE && d->json.nodes[t].kind == WJ_STRING;
}

/* The remapped tensor that is component k's input layer (timm: the first_conv's weight; otherwise a
 * tensor with as many input channels as the config declares), or NULL; WIDEN_EUSAGE when two
 * remapped tensors qualify with different maps. */
static widen_status input_layer(const widen_model *m, size_t k, const widen_transform *tr,
                                const widen_tensor_edit **out, const char **out_name, uint64_t *out_channels,
                                widen_error *err)
{
    const widen_model_component *c = &m->components[k];
    char *firsts[8];
    size_t n_first = widen_model_first_layers(m, k, firsts, 8);
    widen_channel_decl decls[8];
    size_t n_decl = widen_model_declarations(m, k, decls, 8);
    const widen_tensor_edit *input = NULL;
    const char *input_name = NULL;
    uint64_t channels = 0;
    widen_status st = WIDEN_OK;
    for (size_t e = 0; e < tr->count && !st; e++) {
        const widen_tensor_edit *edit = &tr->edits[e];
        long t = widen_model_tensor_find(m, edit->name);
        size_t file;
        if (t < 0) continue;
        const widen_tensor_info *info = widen_model_tensor_at(m, (size_t)t, &file);
        if (m->files[file].component != k) continue;
        int axis = edit->axis < 0 ? edit->axis + info->rank : edit->axis;
        uint64_t ch = info->shape[axis];
        const char *local = edit->name + strlen(c->prefix);
        /* an input layer's input channels: axis 1 of a PyTorch kernel (out, in, ...), or axis -2 as
         * given, the HWIO convention; output channels (axis 0 of a conv_out) or a kernel's height are
         * not the model's input */
        if (info->rank < 3 || (axis != 1 && edit->axis != -2)) continue;
        int is_input = 0;
        if (n_first) {
            for (size_t f = 0; f < n_first; f++) is_input |= strcmp(firsts[f], local) == 0;
        } else if (n_decl) {
            for (size_t d = 0; d < n_decl; d++) is_input |= decls[d].value == (double)ch;
        } else {
            /* transformers leaves num_channels out when it is its default, 3 */
            is_input = ch == 3 && transformers_config(&c->config);
        }
        if (!is_input) continue;
        if (input && (channels != ch || !same_map(input, edit)))
            st = widen_fail_hint(err, WIDEN_HINT_NO_CONFIG, WIDEN_EUSAGE, "%sconfig.json: '%s' and '%s' both look "
                                 "like the input layer, but are remapped differently: the configs cannot follow both",
                                 c->prefix, input_name, edit->name);
        input = edit;
        input_name = edit->name;
        channels = ch;
    }
    for (size_t f = 0; f < n_first; f++) free(firsts[f]);
    *out = st ? NULL : input;
    *out_name = input_name;
    *out_channels = channels;
    return st;
}

/* The edits of component k's config.json and preprocessor_config.json that follow the transform,
 * when it remaps the component's input layer. */
static widen_status config_edits(const widen_model *m, size_t k, const widen_transform *tr,
                                 const widen_apply_options *o, widen_json_edits *cfg, widen_json_edits *pre,
                                 widen_error *err)
{
    const widen_model_component *c = &m->components[k];
    if (!c->config.rel && !c->preprocessor.rel) return WIDEN_OK;
    const widen_tensor_edit *input;
    const char *input_name;
    uint64_t channels;
    widen_channel_decl decls[8];
    size_t n_decl = widen_model_declarations(m, k, decls, 8);
    widen_status st = input_layer(m, k, tr, &input, &input_name, &channels, err);
    if (st) return st;
    /* a config that cannot be read cannot be followed: without it, any remap of the component's
     * kernels might be of its input layer */
    const widen_model_doc *broken = c->config.error ? &c->config : c->preprocessor.error ? &c->preprocessor : NULL;
    for (size_t e = 0; broken && !input && e < tr->count; e++) {
        long t = widen_model_tensor_find(m, tr->edits[e].name);
        size_t file;
        if (t >= 0 && (widen_model_tensor_at(m, (size_t)t, &file), m->files[file].component == k)) input = &tr->edits[e];
    }
    if (broken && input)
        return widen_fail_hint(err, WIDEN_HINT_NO_CONFIG, WIDEN_EFORMAT, "%s; the configs cannot follow the transform",
                               broken->error);
    if (!input) {
        /* no config says this layer is the input: say so, when a kernel's input channels changed
         * count in a component that has configs (they may describe it under a name widen does not
         * know) */
        const widen_json *pj = &c->preprocessor.json;
        size_t mean = widen_json_get(pj, 0, "image_mean");
        for (size_t e = 0; e < tr->count; e++) {
            long t = widen_model_tensor_find(m, tr->edits[e].name);
            size_t file;
            const widen_tensor_info *info = t >= 0 ? widen_model_tensor_at(m, (size_t)t, &file) : NULL;
            if (!info || m->files[file].component != k || info->rank < 3) continue;
            int axis = tr->edits[e].axis < 0 ? tr->edits[e].axis + info->rank : tr->edits[e].axis;
            if ((axis != 1 && tr->edits[e].axis != -2) || tr->edits[e].count == info->shape[axis]) continue;
            int stale_list = mean != WJ_NONE && pj->nodes[mean].kind == WJ_ARRAY && pj->nodes[mean].count == info->shape[axis];
            warn(o, "%s: its input channels changed, but no config of %s declares %llu input channels: the configs "
                 "are left as they are; check them%s", tr->edits[e].name, *c->rel ? c->rel : "the folder",
                 (unsigned long long)info->shape[axis], stale_list ? " (preprocessor_config.json's image_mean lists the "
                 "old channels)" : "");
            break;
        }
        return st;
    }
    uint64_t n = input->count;
    char count_text[32];
    snprintf(count_text, sizeof count_text, "%llu", (unsigned long long)n);
    size_t edited[16], n_edited = 0;
    const widen_json *j = &c->config.json;
    int agree = 0;
    for (size_t d = 0; d < n_decl; d++) agree |= decls[d].value == (double)channels;
    if (n_decl && !agree) {
        /* the configs describe another input than these weights: not a guess widen makes */
        warn(o, "%sconfig.json: %s is %g, but the input layer '%s' has %llu channels: the configs are left as they are",
             c->prefix, decls[0].path, decls[0].value, input_name, (unsigned long long)channels);
        return WIDEN_OK;
    }
    for (size_t d = 0; d < n_decl; d++) {
        if (decls[d].value == (double)channels) {
            if (n != channels)
                widen_json_replace(cfg, j->nodes[decls[d].node].start, j->nodes[decls[d].node].end, count_text);
            edited[n_edited++] = decls[d].node;
        }
    }
    if (!n_decl && n != channels && transformers_config(&c->config) &&
        widen_json_get(j, 0, "pretrained_cfg") == WJ_NONE) {
        /* the default left out: say it, where transformers reads it (vision_config for CLIP and the like) */
        size_t vision = widen_json_get(j, 0, "vision_config");
        if (vision != WJ_NONE && j->nodes[vision].kind == WJ_OBJECT) insert_member(j, vision, "num_channels", count_text, cfg);
        else insert_member(j, 0, "num_channels", count_text, cfg);
        warn(o, "%sconfig.json declares no num_channels (transformers' default, 3): added \"num_channels\": %s%s",
             c->prefix, count_text, vision != WJ_NONE ? " to vision_config" : "");
    }
    size_t pretrained = c->config.rel ? widen_json_get(j, 0, "pretrained_cfg") : WJ_NONE;
    if (n != channels && pretrained != WJ_NONE &&
        widen_json_get(j, widen_json_get(j, 0, "model_args"), "in_chans") == WJ_NONE) {
        /* timm builds the model from model_args: without in_chans it would build the old stem */
        size_t args = widen_json_get(j, 0, "model_args");
        /* in the file's layout: the lead before its first key, one level deeper */
        char value[256];
        const widen_json_node *top = &j->nodes[0];
        size_t lead_len = top->first != WJ_NONE ? j->nodes[top->first].key_start - top->start - 1 : 0;
        const char *lead = j->text + top->start + 1, *nl = memchr(lead, '\n', lead_len);
        if (nl && lead_len < 100) {
            int indent = (int)(lead_len - (size_t)(nl + 1 - lead));
            snprintf(value, sizeof value, "{%.*s%.*s\"in_chans\": %s%.*s}", (int)lead_len, lead, indent, nl + 1,
                     count_text, (int)lead_len, lead);
        } else {
            snprintf(value, sizeof value, "{\"in_chans\": %s}", count_text);
        }
        if (args != WJ_NONE && j->nodes[args].kind == WJ_OBJECT) insert_member(j, args, "in_chans", count_text, cfg);
        else if (args == WJ_NONE) insert_member(j, 0, "model_args", value, cfg);
        else if (j->nodes[args].kind == WJ_NULL) widen_json_replace(cfg, j->nodes[args].start, j->nodes[args].end, value);
        else warn(o, "%sconfig.json: model_args is not an object: in_chans not set, and timm would build the old "
                  "stem", c->prefix);
    }
    /* per-channel normalisation */
    static const char *const stats[2][2] = {{"mean", "image_mean"}, {"std", "image_std"}};
    for (int s = 0; s < 2; s++) {
        double fill = s == 0 ? (o ? o->norm_fill_mean : 0) : (o ? o->norm_fill_std : 0);
        int have_fill = o && o->norm_fill;
        size_t node = widen_json_get(j, pretrained, stats[s][0]);
        if (node != WJ_NONE) {
            if (remap_list(j, node, input, channels, have_fill, fill, cfg)) edited[n_edited++] = node;
            else warn(o, "%sconfig.json: pretrained_cfg.%s is not a list of %llu numbers: left as it is", c->prefix,
                      stats[s][0], (unsigned long long)channels);
        }
        const widen_json *pj = &c->preprocessor.json;
        node = c->preprocessor.rel ? widen_json_get(pj, 0, stats[s][1]) : WJ_NONE;
        if (node != WJ_NONE && !remap_list(pj, node, input, channels, have_fill, fill, pre))
            warn(o, "%spreprocessor_config.json: %s is not a list of %llu numbers: left as it is", c->prefix,
                 stats[s][1], (unsigned long long)channels);
    }
    char mentions[600] = "";
    if (c->config.rel) other_mentions(j, 0, "", edited, n_edited, (double)channels, mentions, sizeof mentions, 0);
    if (mentions[0]) warn(o, "%sconfig.json: %s mention%s channels and %s left as %s", c->prefix, mentions,
                          strchr(mentions, ',') ? "" : "s", strchr(mentions, ',') ? "are" : "is",
                          strchr(mentions, ',') ? "they are" : "it is");
    if (cfg->failed || pre->failed) return widen_fail(err, WIDEN_EIO, "out of memory");
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* The plan                                                                                         */

/* Each file's share of the transform, under the file's own names. */
static widen_status shares(const widen_model *m, const widen_transform *tr, widen_transform **out, widen_error *err)
{
    for (size_t e = 0; e < tr->count; e++) {
        const widen_tensor_edit *edit = &tr->edits[e];
        long t = widen_model_tensor_find(m, edit->name);
        if (t < 0) return widen_fail(err, WIDEN_EUSAGE, "%s: no tensor named '%s'", m->path, edit->name);
        size_t file = m->tensor_file[t];
        if (!out[file] && !(out[file] = widen_transform_new())) return widen_fail(err, WIDEN_EIO, "out of memory");
        const char *local = m->files[file].ckpt->tensors[widen_model_local_index(m, (size_t)t)].name;
        widen_status st = widen_transform_add_map(out[file], local, edit->axis, edit->map, edit->count, err);
        if (st) return st;
    }
    for (size_t f = 0; tr->cast && f < m->file_count; f++) {
        if (!out[f] && !(out[f] = widen_transform_new())) return widen_fail(err, WIDEN_EIO, "out of memory");
        widen_status st = widen_transform_set_cast(out[f], tr->cast_to, err);
        if (st) return st;
    }
    return WIDEN_OK;
}

static int by_out_rel(const void *a, const void *b)
{
    return strcmp(((const plan_file *)a)->out_rel, ((const plan_file *)b)->out_rel);
}

/* Plans the output folder of `tr` over the model; `format`: every weight file's output format, or
 * NULL to keep each file's. */
static widen_status plan_build(const widen_model *m, const widen_transform *tr, const char *format,
                               const widen_apply_options *o, folder_plan *p, widen_error *err)
{
    memset(p, 0, sizeof *p);
    widen_transform **share = calloc(m->file_count + 1, sizeof *share);
    widen_status st = share ? shares(m, tr, share, err) : widen_fail(err, WIDEN_EIO, "out of memory");
    int *converted = calloc(m->component_count + 1, sizeof *converted);
    if (!st && !converted) st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t f = 0; f < m->file_count && !st; f++) {
        const widen_model_part *part = &m->files[f];
        const char *to = format ? format : part->ckpt->format;
        int convert = strcmp(to, part->ckpt->format) != 0;
        char *out_rel = convert ? widen_model_converted_name(part->rel, to) : strdup(part->rel);
        plan_file *pf = out_rel ? plan_add(p, share[f] || convert ? PLAN_REWRITE : PLAN_COPY, part->rel, out_rel) : NULL;
        free(out_rel);
        if (!pf) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            break;
        }
        pf->part = f;
        pf->format = to;
        converted[part->component] |= convert;
        if (pf->op == PLAN_REWRITE) {
            pf->share = share[f] ? share[f] : widen_transform_new();
            share[f] = NULL;
            if (!pf->share) st = widen_fail(err, WIDEN_EIO, "out of memory");
            p->rewritten++;
        }
    }
    for (size_t k = 0; k < m->component_count && !st; k++) {
        const widen_model_component *c = &m->components[k];
        if (c->index.rel) {
            char *out_rel = converted[k] ? widen_model_converted_name(c->index.rel, format) : strdup(c->index.rel);
            plan_file *pf = out_rel ? plan_add(p, PLAN_DOC, c->index.rel, out_rel) : NULL;
            free(out_rel);
            if (!pf) st = widen_fail(err, WIDEN_EIO, "out of memory");
            else {
                pf->doc = &c->index;
                pf->component = k;
            }
        }
        widen_json_edits cfg = {0}, pre = {0};
        if (!st && !(o && o->no_config)) st = config_edits(m, k, tr, o, &cfg, &pre, err);
        if (!st && !(o && o->no_config) && tr->cast && c->config.rel) {
            /* transformers' torch_dtype names the weights' dtype */
            const widen_json *j = &c->config.json;
            size_t dt = widen_json_get(j, 0, "torch_dtype");
            const char *now = tr->cast_to == WIDEN_F32 ? "float32" : tr->cast_to == WIDEN_F16 ? "float16" : "bfloat16";
            if (dt != WJ_NONE && j->nodes[dt].kind == WJ_STRING && strcmp(j->nodes[dt].str, now) != 0 &&
                (strcmp(j->nodes[dt].str, "float32") == 0 || strcmp(j->nodes[dt].str, "float16") == 0 ||
                 strcmp(j->nodes[dt].str, "bfloat16") == 0)) {
                char quoted[16];
                snprintf(quoted, sizeof quoted, "\"%s\"", now);
                widen_json_replace(&cfg, j->nodes[dt].start, j->nodes[dt].end, quoted);
            }
        }
        const widen_model_doc *docs[2] = {&c->config, &c->preprocessor};
        widen_json_edits *edits[2] = {&cfg, &pre};
        for (int d = 0; d < 2 && !st; d++) {
            if (!docs[d]->rel) continue;
            plan_file *pf = plan_add(p, edits[d]->count ? PLAN_DOC : PLAN_COPY, docs[d]->rel, docs[d]->rel);
            if (!pf) st = widen_fail(err, WIDEN_EIO, "out of memory");
            else {
                pf->doc = docs[d];
                pf->edits = *edits[d];
                memset(edits[d], 0, sizeof *edits[d]);
            }
        }
        widen_json_edits_free(&cfg);
        widen_json_edits_free(&pre);
    }
    size_t left_out = 0;
    widen_text names = {0}, trainer = {0};
    int changes = tr->count || tr->cast;
    for (size_t i = 0; i < m->other_count && !st; i++) {
        const widen_model_other *x = &m->others[i];
        int document = 0;
        for (size_t k = 0; k < m->component_count; k++) {
            const widen_model_component *c = &m->components[k];
            document |= (c->index.rel && strcmp(c->index.rel, x->rel) == 0) ||
                        (c->config.rel && strcmp(c->config.rel, x->rel) == 0) ||
                        (c->preprocessor.rel && strcmp(c->preprocessor.rel, x->rel) == 0);
        }
        if (document) continue;
        if (x->kind == WIDEN_OTHER_LEFT_OUT) {
            if (left_out++ < 6) {
                widen_text_puts(&names, left_out > 1 ? ", " : "");
                widen_text_puts(&names, left_out > 5 ? "..." : x->rel);
            }
            continue;
        }
        const char *base = strrchr(x->rel, '/') ? strrchr(x->rel, '/') + 1 : x->rel;
        if (changes && (strcmp(base, "optimizer.pt") == 0 || strcmp(base, "scheduler.pt") == 0 ||
                        strcmp(base, "scaler.pt") == 0)) {
            widen_text_puts(&trainer, trainer.len ? ", " : "");
            widen_text_puts(&trainer, x->rel);
        }
        if (!plan_add(p, PLAN_COPY, x->rel, x->rel)) st = widen_fail(err, WIDEN_EIO, "out of memory");
    }
    if (!st && left_out)
        warn(o, "%s: not in the output: %zu weight file%s the model is not made of (variants, other formats, another "
             "index), which would no longer match it: %s", m->path, left_out, left_out == 1 ? "" : "s",
             names.data ? names.data : "");
    if (!st && m->skipped_history)
        warn(o, "%s: not in the output: .git and .cache/huggingface (the history and download records of the input's "
             "files)", m->path);
    if (!st && trainer.len)
        warn(o, "%s: copied as they are, with the optimizer's state for the old shapes: %s (a training run resumed "
             "from them needs that state widened too, or removed)", m->path, trainer.data);
    free(names.data);
    free(trainer.data);
    if (!st) {
        qsort(p->files, p->count, sizeof *p->files, by_out_rel);
        for (size_t i = 1; i < p->count && !st; i++)
            if (strcmp(p->files[i - 1].out_rel, p->files[i].out_rel) == 0)
                st = widen_fail(err, WIDEN_EUSAGE, "%s: two files of the output would be called %s", m->path,
                                p->files[i].out_rel);
    }
    for (size_t f = 0; share && f < m->file_count; f++) widen_transform_free(share[f]);
    free(share);
    free(converted);
    if (st) plan_free(p);
    return st;
}

/* The index of component k once its shards are written: shard names as the plan names them, the
 * total size in the input's convention (the sum of shard file sizes, if that is what it was; else
 * the tensors' bytes) plus the change, total_parameters plus the change in elements. */
static widen_status index_text(const widen_model *m, const folder_plan *p, plan_file *pf, const char *out_root,
                               char **text, size_t *len, widen_error *err)
{
    const widen_model_component *c = &m->components[pf->component];
    const widen_json *j = &pf->doc->json;
    widen_json_edits *e = &pf->edits;
    int64_t d_bytes = 0, d_elements = 0;
    uint64_t in_files = 0, out_files = 0;
    for (size_t i = 0; i < p->count; i++) {
        const plan_file *x = &p->files[i];
        if (x->part == SIZE_MAX || m->files[x->part].component != pf->component) continue;
        in_files += widen_checkpoint_size(m->files[x->part].ckpt);
        if (x->op == PLAN_REWRITE) {
            d_bytes += (int64_t)(x->record.out_bytes - x->record.in_bytes);
            d_elements += (int64_t)(x->record.out_elements - x->record.in_elements);
            char *path = join(out_root, x->out_rel);
            struct stat s;
            if (!path || stat(path, &s) != 0) {
                free(path);
                return widen_fail(err, WIDEN_EIO, "%s/%s: cannot read its size", out_root, x->out_rel);
            }
            free(path);
            out_files += (uint64_t)s.st_size;
        } else {
            out_files += widen_checkpoint_size(m->files[x->part].ckpt);
        }
    }
    size_t meta = widen_json_get(j, 0, "metadata");
    size_t total = widen_json_get(j, meta, "total_size"), params = widen_json_get(j, meta, "total_parameters");
    char number[40];
    if (total != WJ_NONE) {
        /* a whole number (the reader checked): exact as written, or a float's value below 2^53 */
        const widen_json_node *t = &j->nodes[total];
        uint64_t old = t->exact ? t->whole : (uint64_t)t->number;
        int64_t change = old == in_files ? (int64_t)(out_files - in_files) : d_bytes;
        if ((change < 0 && (uint64_t)-change > old) || (change > 0 && old > (uint64_t)INT64_MAX - (uint64_t)change))
            return widen_fail(err, WIDEN_EFORMAT, "%s/%s: total_size %llu cannot take the change of %lld bytes (it is not "
                              "this model's size)", m->root, pf->in_rel, (unsigned long long)old, (long long)change);
        uint64_t now = old + (uint64_t)change;
        snprintf(number, sizeof number, t->integer ? "%llu" : "%llu.0", (unsigned long long)now);
        if (now != old) widen_json_replace(e, t->start, t->end, number);
    }
    if (params != WJ_NONE && j->nodes[params].exact && !j->nodes[params].negative && d_elements) {
        uint64_t old = j->nodes[params].whole;
        if ((d_elements < 0 && (uint64_t)-d_elements > old) ||
            (d_elements > 0 && old > (uint64_t)INT64_MAX - (uint64_t)d_elements))
            return widen_fail(err, WIDEN_EFORMAT, "%s/%s: total_parameters %llu cannot take the change of %lld elements",
                              m->root, pf->in_rel, (unsigned long long)old, (long long)d_elements);
        snprintf(number, sizeof number, "%llu", (unsigned long long)(old + (uint64_t)d_elements));
        widen_json_replace(e, j->nodes[params].start, j->nodes[params].end, number);
    }
    /* shard names, where the format changed */
    size_t map = widen_json_get(j, 0, "weight_map");
    widen_table renamed = {0};
    for (size_t i = 0; i < p->count; i++) {
        const plan_file *x = &p->files[i];
        if (x->part == SIZE_MAX || m->files[x->part].component != pf->component || strcmp(x->in_rel, x->out_rel) == 0)
            continue;
        const char *base = x->in_rel + strlen(c->prefix);
        widen_table_put(&renamed, base, strlen(base), i, NULL);
    }
    for (size_t k = renamed.count ? j->nodes[map].first : WJ_NONE; k != WJ_NONE; k = j->nodes[k].next) {
        size_t i;
        if (!widen_table_get(&renamed, j->nodes[k].str, j->nodes[k].len, &i)) continue;
        widen_text q = {0};
        widen_text_json_string(&q, p->files[i].out_rel + strlen(c->prefix));
        if (q.failed) e->failed = 1;
        else widen_json_replace(e, j->nodes[k].start, j->nodes[k].end, q.data);
        free(q.data);
    }
    widen_table_free(&renamed);
    *text = widen_json_apply(pf->doc->text, pf->doc->size, e, len);
    return *text ? WIDEN_OK : widen_fail(err, WIDEN_EIO, "out of memory");
}

/* ---------------------------------------------------------------------------------------------- */
/* apply                                                                                            */

static widen_status write_file(const char *path, const void *data, size_t len, int do_fsync, widen_copy_counts *counts,
                               widen_error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0) return widen_fail(err, WIDEN_EIO, "%s: cannot create: %s", path, strerror(errno));
    widen_status st = widen_write_all(fd, data, len, path, err);
    if (!st) counts->written += len;
    if (!st && do_fsync && fsync(fd) != 0) st = widen_fail(err, WIDEN_EIO, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && !st) st = widen_fail(err, WIDEN_EIO, "%s: close failed: %s", path, strerror(errno));
    return st;
}

/* Copies `size` bytes of an open file inside the kernel (cloned where the file system can), else
 * through a buffer, in steps of 64 MiB with progress (or NULL) after each: a large shard can be
 * stopped. A file that shrinks meanwhile is an error, not a short copy. */
static widen_status copy_open(int in, uint64_t size, const char *from, const char *to, int do_fsync,
                              widen_copy_counts *counts, widen_progress_fn progress, void *user, widen_error *err)
{
    enum { STEP = 64u << 20 };
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (out < 0) return widen_fail(err, WIDEN_EIO, "%s: cannot create: %s", to, strerror(errno));
    widen_status st = WIDEN_OK;
    int kernel = 1; /* until the kernel says it cannot copy between these files */
    static const size_t chunk = 1 << 20;
    char *buf = NULL;
    for (uint64_t at = 0; !st && at < size;) {
        uint64_t len = size - at < STEP ? size - at : STEP;
        if (kernel && (st = widen_copy_all(in, at, out, len, to, counts, err)) == WIDEN_EUSAGE) {
            if (at) st = widen_fail(err, WIDEN_EIO, "%s: the kernel copied part of a file and not the rest", to);
            else st = WIDEN_OK, kernel = 0;
            continue;
        }
        if (!kernel && !buf && !(buf = malloc(chunk))) st = widen_fail(err, WIDEN_EIO, "out of memory");
        for (uint64_t done = 0; !kernel && !st && done < len;) {
            ssize_t r = pread(in, buf, len - done < chunk ? (size_t)(len - done) : chunk, (off_t)(at + done));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) st = widen_fail(err, WIDEN_EIO, "%s: cannot read: %s", from, r < 0 ? strerror(errno) : "it shrank");
            else if (!(st = widen_write_all(out, buf, (size_t)r, to, err))) done += (uint64_t)r, counts->written += (uint64_t)r;
        }
        at += len;
        if (!st && progress && progress(user, at, size)) st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", to);
    }
    free(buf);
    if (!st && do_fsync && fsync(out) != 0) st = widen_fail(err, WIDEN_EIO, "%s: fsync failed: %s", to, strerror(errno));
    if (close(out) != 0 && !st) st = widen_fail(err, WIDEN_EIO, "%s: close failed: %s", to, strerror(errno));
    return st;
}

/* Copies a file of the folder that widen does not read (a README, a tokenizer) as it is now. */
static widen_status copy_file(const char *from, const char *to, int do_fsync, widen_copy_counts *counts,
                              widen_error *err)
{
    int in = open(from, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat s;
    if (in < 0 || fstat(in, &s) != 0 || !S_ISREG(s.st_mode)) {
        widen_status st = widen_fail(err, in < 0 ? WIDEN_EIO : WIDEN_EFORMAT, "%s: cannot read: %s", from,
                                     in < 0 ? strerror(errno) : "not a regular file");
        if (in >= 0) close(in);
        return st;
    }
    widen_status st = copy_open(in, (uint64_t)s.st_size, from, to, do_fsync, counts, NULL, NULL, err);
    close(in);
    return st;
}

/* Creates the folders above `rel` inside root that do not exist yet. */
static widen_status make_parents(widen_temp_folder *tf, const char *rel, widen_error *err)
{
    char *path = join(tf->path, rel);
    if (!path) return widen_fail(err, WIDEN_EIO, "out of memory");
    size_t root_len = strlen(tf->path);
    for (char *s = path + root_len + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        struct stat st;
        if (stat(path, &st) != 0) {
            widen_status noted = widen_temp_folder_note(tf, path, err);
            if (noted || mkdir(path, 0777) != 0) {
                widen_status r = noted ? noted : widen_fail(err, WIDEN_EIO, "%s: cannot create: %s", path, strerror(errno));
                free(path);
                return r;
            }
        }
        *s = '/';
    }
    free(path);
    return WIDEN_OK;
}

static const char *folder_format(const widen_apply_options *o, widen_error *err, widen_status *st)
{
    *st = WIDEN_OK;
    if (!o->format) return NULL;
    if (strcmp(o->format, "npz") == 0)
        *st = widen_fail_hint(err, WIDEN_HINT_FORMAT, WIDEN_EUSAGE, "output format npz: widen writes .npz files, not "
                              "model folders; a folder's weights are written as safetensors or pt");
    else if (strcmp(o->format, "safetensors") != 0 && strcmp(o->format, "pt") != 0)
        *st = widen_fail(err, WIDEN_EUSAGE, "output format '%s' is not safetensors or pt", o->format);
    return o->format;
}

static char *folder_manifest(const widen_model *m, const char *output, const char *transform_json,
                             const folder_plan *p, const widen_text *tensors, const widen_apply_options *o)
{
    widen_text t = {0};
    widen_text_puts(&t, "{\n  \"tool\": \"widen\",\n  \"version\": ");
    widen_text_json_string(&t, WIDEN_VERSION_STRING);
    widen_text_puts(&t, ",\n  \"input\": ");
    widen_text_json_string(&t, m->path);
    widen_text_puts(&t, ",\n  \"output\": ");
    widen_text_json_string(&t, output);
    widen_text_puts(&t, ",\n  \"transform\": ");
    widen_text_puts(&t, transform_json);
    widen_text_puts(&t, o->no_config ? ",\n  \"configs\": {\"follow\": false}" : ",\n  \"configs\": {\"follow\": true");
    if (!o->no_config && o->norm_fill) {
        char a[40], b[40];
        widen_json_format_double(o->norm_fill_mean, a);
        widen_json_format_double(o->norm_fill_std, b);
        widen_text_puts(&t, ", \"norm_fill\": [");
        widen_text_puts(&t, a);
        widen_text_puts(&t, ", ");
        widen_text_puts(&t, b);
        widen_text_puts(&t, "]");
    }
    if (!o->no_config) widen_text_puts(&t, "}");
    widen_text_puts(&t, ",\n  \"files\": [");
    for (size_t i = 0; i < p->count; i++) {
        widen_text_puts(&t, i ? ",\n    {\"path\": " : "\n    {\"path\": ");
        widen_text_json_string(&t, p->files[i].out_rel);
        widen_text_puts(&t, ", \"op\": ");
        widen_text_json_string(&t, p->files[i].op == PLAN_COPY ? "copy" : p->files[i].op == PLAN_REWRITE ? "rewrite" : "edit");
        widen_text_puts(&t, "}");
    }
    widen_text_puts(&t, p->count ? "\n  ],\n  \"tensors\": [" : "],\n  \"tensors\": [");
    if (tensors->data) widen_text_puts(&t, tensors->data);
    widen_text_puts(&t, tensors->len ? "\n  ]\n}\n" : "]\n}\n");
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    return t.data;
}

/* 1 if folder `path` (which exists) or a folder above it is one the input's listing entered: what
 * is written there would be inside the input, however links lead there. */
static int inside_input(const widen_model *m, const char *path)
{
    char *p = realpath(path, NULL);
    int inside = 0;
    while (p && !inside) {
        struct stat s;
        if (stat(p, &s) == 0)
            for (size_t i = 0; i < m->dir_count && !inside; i++)
                inside = m->dirs[i].dev == s.st_dev && m->dirs[i].ino == s.st_ino;
        if (strcmp(p, "/") == 0) break;
        char *up = strdup(dirname(p));
        free(p);
        p = up;
    }
    free(p);
    return inside;
}

/* The folder a path will be created in. */
static char *parent_of(const char *path)
{
    char *copy = strdup(path), *out = copy ? strdup(dirname(copy)) : NULL;
    free(copy);
    return out;
}

static widen_status check_folder_target(const widen_model *m, const char *output, const widen_apply_options *o,
                                        widen_error *err)
{
    struct stat s;
    if (!*output) return widen_fail(err, WIDEN_EUSAGE, "the output path is empty");
    if (strcmp(output, "-") == 0)
        return widen_fail(err, WIDEN_EUSAGE, "-: a model folder is written to a folder, not to standard output");
    if (lstat(output, &s) == 0)
        return widen_fail(err, WIDEN_EUSAGE, "%s: exists; a model folder is written to a new folder (widen does not "
                          "replace or merge folders: remove it first)", output);
    static const char *const files[] = {".safetensors", ".pt", ".pth", ".bin", ".json", ".npz", ".npy"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t n = strlen(output), k = strlen(files[i]);
        if (n > k && strcmp(output + n - k, files[i]) == 0)
            return widen_fail(err, WIDEN_EUSAGE, "%s: a model folder is written to a folder, and this names a file; "
                              "to write one file, name one of the folder's files as the input", output);
    }
    char *parent = parent_of(output), *mparent = o->manifest_path ? parent_of(o->manifest_path) : NULL;
    widen_status st = WIDEN_OK;
    if (!parent || (o->manifest_path && !mparent)) st = widen_fail(err, WIDEN_EIO, "out of memory");
    else if (inside_input(m, parent))
        st = widen_fail(err, WIDEN_EUSAGE, "%s: inside the input folder %s; write the output elsewhere", output, m->root);
    if (!st && o->manifest_path) {
        const char *man = o->manifest_path;
        char *out_abs = realpath(parent, NULL), *man_abs = realpath(mparent, NULL);
        size_t n = out_abs ? strlen(out_abs) : 0;
        const char *out_base = strrchr(output, '/') ? strrchr(output, '/') + 1 : output;
        const char *man_base = strrchr(man, '/') ? strrchr(man, '/') + 1 : man;
        if (!man_abs)
            st = widen_fail(err, WIDEN_EUSAGE, "%s: its folder does not exist", man);
        else if (inside_input(m, mparent))
            st = widen_fail(err, WIDEN_EUSAGE, "%s: inside the input folder %s; widen never writes into its input", man,
                            m->root);
        else if (out_abs && strcmp(man_abs, out_abs) == 0 && strcmp(man_base, out_base) == 0)
            st = widen_fail(err, WIDEN_EUSAGE, "%s: the manifest and the output are the same path", man);
        else if (out_abs && strncmp(man_abs, out_abs, n) == 0 && man_abs[n] == '/' &&
                 strncmp(man_abs + n + 1, out_base, strlen(out_base)) == 0 &&
                 (man_abs[n + 1 + strlen(out_base)] == '/' || man_abs[n + 1 + strlen(out_base)] == '\0'))
            st = widen_fail(err, WIDEN_EUSAGE, "%s: inside the output folder; a manifest goes beside it", man);
        else if (lstat(man, &s) == 0 && !S_ISREG(s.st_mode))
            st = widen_fail(err, WIDEN_EUSAGE, "%s: exists and is not a regular file; widen replaces only files", man);
        else if (lstat(man, &s) == 0 && !o->overwrite)
            st = widen_fail_hint(err, WIDEN_HINT_OVERWRITE, WIDEN_EUSAGE, "%s: exists", man);
        free(out_abs);
        free(man_abs);
    }
    free(parent);
    free(mparent);
    return st;
}

widen_status widen_model_apply(widen_model *m, const char *output, const widen_transform *tr,
                               const widen_apply_options *options, widen_error *err)
{
    widen_apply_options given;
    if (!m || !output || !tr) return widen_fail(err, WIDEN_EUSAGE, "widen_model_apply needs a model, an output path and a transform");
    widen_status st = widen_apply_options_read(options, &given, err);
    if (st) return st;
    options = &given;
    if (!m->root) return widen_apply_checkpoint(m->files[0].ckpt, output, tr, options, err);
    widen_apply_stats_reset(options->stats);
    st = widen_isa_init(err);
    if (!st && options->norm_fill && (!isfinite(options->norm_fill_mean) || !isfinite(options->norm_fill_std)))
        st = widen_fail(err, WIDEN_EUSAGE, "the normalisation fill must be two finite numbers");
    const char *format = st ? NULL : folder_format(options, err, &st);
    if (st || (st = check_folder_target(m, output, options, err))) return st;
    folder_plan p;
    if ((st = plan_build(m, tr, format, options, &p, err))) return st;
    int edits = 0;
    for (size_t i = 0; i < p.count; i++) edits |= p.files[i].op != PLAN_COPY;
    if (!edits) {
        plan_free(&p);
        return widen_fail(err, WIDEN_EUSAGE, "nothing to do: no tensor is remapped, nothing is cast, and the format "
                          "stays the same");
    }
    int unrecorded = 0;
    for (size_t i = 0; i < p.count; i++)
        unrecorded |= p.files[i].op == PLAN_REWRITE && strcmp(p.files[i].format, "pt") == 0;
    if (unrecorded && !options->manifest_path)
        warn(options, "%s: its .bin/.pt files have no place to record the transform, and no manifest is written: "
             "verify will need one", output);
    widen_temp_folder tf = {.slot = -1};
    widen_temp_file man = {.fd = -1, .slot = -1};
    widen_text tensors = {0};
    size_t entries = 0;
    char *provenance = widen_transform_to_json(tr), *manifest = NULL;
    /* progress: each weight file's share is its size, rewritten or copied (the others are small) */
    widen_meter meter = {.fn = options->progress, .user = options->progress_user};
    for (size_t i = 0; i < p.count; i++)
        if (p.files[i].part != SIZE_MAX && p.files[i].op != PLAN_DOC) meter.total += m->files[p.files[i].part].ckpt->size;
    if (!provenance) st = widen_fail(err, WIDEN_EIO, "out of memory");
    widen_apply_options fo = *options;
    widen_apply_stats shards;
    widen_apply_stats_init(&shards, sizeof shards);
    widen_copy_counts files = {0};
    fo.stats = &shards; /* the rewritten files', added to the others' on success */
    fo.manifest_path = NULL;
    fo.overwrite = 0;
    fo.progress = meter.fn ? widen_meter_progress : NULL;
    fo.progress_user = &meter;
    if (!st && options->dry_run) {
        /* the folder's parent and the manifest's take files; each rewritten file passes apply's checks */
        st = widen_writable_folder(output, "a folder", err);
        if (!st && options->manifest_path) st = widen_writable_folder(options->manifest_path, "a file", err);
        for (size_t i = 0; i < p.count && !st; i++) {
            plan_file *pf = &p.files[i];
            char *to = pf->op == PLAN_REWRITE ? join(output, pf->out_rel) : NULL;
            widen_apply_record none = {0};
            fo.format = pf->format;
            if (pf->op == PLAN_REWRITE)
                st = to ? widen_apply_file(m->files[pf->part].ckpt, to, pf->share, &fo, &none, err)
                        : widen_fail(err, WIDEN_EIO, "out of memory");
            free(to);
        }
        free(provenance);
        plan_free(&p);
        return st;
    }
    /* every file, and each folder above it (as deep as a listing goes) */
    if (!st) st = widen_temp_folder_open(output, p.count * 18 + 16, &tf, err);
    /* weight files first (the index needs their sizes), then documents and copies */
    for (int pass = 0; pass < 2 && !st; pass++) {
        for (size_t i = 0; i < p.count && !st; i++) {
            plan_file *pf = &p.files[i];
            if ((pf->op == PLAN_REWRITE) != (pass == 0)) continue;
            widen_meter_next(&meter, pf->part != SIZE_MAX && pf->op != PLAN_DOC ? m->files[pf->part].ckpt->size : 0);
            char *from = join(m->root, pf->in_rel), *to = join(tf.path, pf->out_rel);
            if (!from || !to) st = widen_fail(err, WIDEN_EIO, "out of memory");
            if (!st) st = make_parents(&tf, pf->out_rel, err);
            if (!st) st = widen_temp_folder_note(&tf, to, err);
            if (!st && pf->op == PLAN_REWRITE) {
                const widen_model_part *part = &m->files[pf->part];
                fo.format = pf->format;
                pf->record = (widen_apply_record){.tensors = options->manifest_path ? &tensors : NULL,
                                                  .file = pf->out_rel,
                                                  .prefix = m->components[part->component].prefix,
                                                  .entries = &entries};
                st = widen_apply_file(part->ckpt, to, pf->share, &fo, &pf->record, err);

            } else if (!st && pf->op == PLAN_COPY && pf->part != SIZE_MAX) {
                /* weights: the file that was read and checked, through its open descriptor, whatever
                 * happened to its name since */
                widen_mapping ck = widen_checkpoint_file(m->files[pf->part].ckpt);
                st = copy_open(ck.fd, ck.size, from, to, options->fsync, &files, meter.fn ? widen_meter_progress : NULL,
                               &meter, err);
                if (st == WIDEN_EINTERRUPTED) widen_fail(err, st, "%s: interrupted; no output written", output);
            } else if (!st && pf->op == PLAN_COPY && pf->doc) {
                st = write_file(to, pf->doc->text, pf->doc->size, options->fsync, &files, err); /* the document as read */
            } else if (!st && pf->op == PLAN_COPY) {
                st = copy_file(from, to, options->fsync, &files, err);
            } else if (!st) {
                char *text = NULL;
                size_t len = 0;
                if (pf->component != SIZE_MAX) st = index_text(m, &p, pf, tf.path, &text, &len, err);
                else if (!(text = widen_json_apply(pf->doc->text, pf->doc->size, &pf->edits, &len)))
                    st = widen_fail(err, WIDEN_EIO, "out of memory");
                if (!st) st = write_file(to, text, len, options->fsync, &files, err);
                free(text);
            }
            if (!st && meter.fn && widen_meter_progress(&meter, 1, 1)) /* the file done: a point to stop at */
                st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted; no output written", output);
            free(from);
            free(to);
        }
    }
    if (!st && tensors.failed) st = widen_fail(err, WIDEN_EIO, "out of memory");
    if (!st && options->manifest_path) {
        if (!(manifest = folder_manifest(m, output, provenance, &p, &tensors, options)))
            st = widen_fail(err, WIDEN_EIO, "out of memory");
        if (!st) st = widen_temp_open(options->manifest_path, &man, err);
        if (!st) st = widen_write_all(man.fd, manifest, strlen(manifest), options->manifest_path, err);
    }
    /* the folder first: it never replaces anything, so a failure there leaves an old manifest as it was */
    if (!st) st = widen_temp_folder_commit(&tf, output, options->fsync, err);
    if (!st && options->manifest_path) st = widen_temp_commit(&man, options->manifest_path, options->fsync,
                                                              options->overwrite, err);
    if (!st) {
        files.cloned += shards.bytes_cloned, files.copied += shards.bytes_copied, files.written += shards.bytes_written;
        widen_apply_stats_add(options->stats, &files);
    }
    if (st) {
        widen_temp_discard(&man);
        widen_temp_folder_discard(&tf);
    } else {
        widen_temp_folder_release(&tf);
        widen_temp_release(&man);
    }
    free(tensors.data);
    free(provenance);
    free(manifest);
    plan_free(&p);
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* verify                                                                                           */

#define difference widen_verify_difference

/* 1 if the file at `path` holds exactly `len` bytes equal to data (data NULL: equal to file `other`),
 * 0 if not, -1 when progress (or NULL: none; called every 8 MiB) asked to stop. */
static int same_bytes(const char *path, const void *data, size_t len, const char *other, widen_progress_fn progress,
                      void *progress_user)
{
    int a = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK), b = other ? open(other, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
    struct stat sa, sb;
    int same = a >= 0 && fstat(a, &sa) == 0 && S_ISREG(sa.st_mode);
    if (same && other) {
        same = b >= 0 && fstat(b, &sb) == 0 && S_ISREG(sb.st_mode) && sa.st_size == sb.st_size;
        len = same ? (size_t)sa.st_size : 0;
    } else if (same) {
        same = (uint64_t)sa.st_size == len;
    }
    static const size_t chunk = 1 << 20;
    char *x = same ? malloc(chunk) : NULL, *y = same && other ? malloc(chunk) : NULL;
    if (same && (!x || (other && !y))) same = 0;
    for (size_t at = 0; same && at < len;) {
        size_t n = len - at < chunk ? len - at : chunk;
        if (pread(a, x, n, (off_t)at) != (ssize_t)n) same = 0;
        else if (other ? pread(b, y, n, (off_t)at) != (ssize_t)n || memcmp(x, y, n) != 0
                       : memcmp(x, (const char *)data + at, n) != 0)
            same = 0;
        at += n;
        if (same && progress && (at % (8 * chunk) == 0 || at == len) && progress(progress_user, at, len)) same = -1;
    }
    free(x);
    free(y);
    if (a >= 0) close(a);
    if (b >= 0) close(b);
    return same;
}

/* The transform a folder output records: the `widen` keys of its safetensors files, each under the
 * file's names, put together under the model's names. */
static widen_status recorded_transform(const widen_model *out, widen_transform **tr, widen_verify_report *r,
                                       widen_error *err)
{
    widen_transform *all = widen_transform_new();
    if (!all) return widen_fail(err, WIDEN_EIO, "out of memory");
    widen_status st = WIDEN_OK;
    int cast_seen = 0, any = 0;
    for (size_t f = 0; f < out->file_count && !st; f++) {
        const widen_checkpoint *c = out->files[f].ckpt;
        const char *recorded = NULL;
        for (size_t i = 0; i < c->metadata_count; i++)
            if (strcmp(c->metadata[i].key, WIDEN_PROVENANCE_KEY) == 0) recorded = c->metadata[i].value;
        if (!recorded) continue;
        any = 1;
        widen_transform *one;
        if ((st = widen_transform_from_json(recorded, &one, err))) break;
        char *canonical = widen_transform_canonical(one, recorded);
        if (!canonical) st = widen_fail(err, WIDEN_EIO, "out of memory");
        else if (strcmp(canonical, recorded) != 0)
            difference(r, "%s: its recorded transform is not the record widen writes", c->path);
        free(canonical);
        const char *prefix = out->components[out->files[f].component].prefix;
        for (size_t e = 0; e < one->count && !st; e++) {
            const widen_tensor_edit *edit = &one->edits[e];
            size_t size = strlen(prefix) + strlen(edit->name) + 1;
            char *name = malloc(size);
            if (!name) st = widen_fail(err, WIDEN_EIO, "out of memory");
            else {
                snprintf(name, size, "%s%s", prefix, edit->name);
                if (widen_transform_edit(all, name)) difference(r, "%s: two files record a transform of '%s'", out->path, name);
                else st = widen_transform_add_map(all, name, edit->axis, edit->map, edit->count, err);
            }
            free(name);
        }
        if (!st && one->cast) {
            if (cast_seen && all->cast_to != one->cast_to)
                difference(r, "%s: its files record casts to different dtypes", out->path);
            else st = widen_transform_set_cast(all, one->cast_to, err);
            cast_seen = 1;
        }
        widen_transform_free(one);
    }
    if (!st && !any)
        st = widen_fail_hint(err, WIDEN_HINT_MANIFEST, WIDEN_EUSAGE, "%s: no transform recorded (none of its "
                             "safetensors files has a '%s' metadata key): a manifest is needed to verify it", out->path,
                             WIDEN_PROVENANCE_KEY);
    if (st) {
        widen_transform_free(all);
        return st;
    }
    *tr = all;
    return WIDEN_OK;
}

/* The output folder's files, sorted. */
typedef struct file_list {
    char **rel;
    size_t count;
} file_list;

static void list_add(file_list *l, char *rel)
{
    char **grown = realloc(l->rel, (l->count + 1) * sizeof *grown);
    if (!grown) {
        free(rel);
        return;
    }
    l->rel = grown;
    l->rel[l->count++] = rel;
}

/* The output folder's files and folders, as they are (links not followed: widen writes none). */
static void list_files(const char *root, const char *rel, int depth, file_list *l, file_list *dirs,
                       widen_verify_report *r)
{
    char *path = *rel ? join(root, rel) : strdup(root);
    DIR *d = path ? opendir(path) : NULL;
    if (!d) difference(r, "%s: cannot list the folder: %s", path ? path : root, strerror(errno));
    else if (depth > 16) difference(r, "%s: folders nested more than 16 deep, which no input of widen has", path);
    struct dirent *e;
    while (d && depth <= 16 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        size_t size = strlen(rel) + strlen(e->d_name) + 2;
        char *child = malloc(size);
        if (!child) break;
        snprintf(child, size, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        struct stat s;
        if (fstatat(dirfd(d), e->d_name, &s, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(s.st_mode)) {
            list_files(root, child, depth + 1, l, dirs, r);
            list_add(dirs, child);
        } else if (fstatat(dirfd(d), e->d_name, &s, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(s.st_mode)) {
            difference(r, "%s/%s: not a regular file (widen writes only files and folders)", root, child);
            free(child);
        } else {
            list_add(l, child);
        }
    }
    if (d) closedir(d);
    free(path);
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* 1 if the plan's files are exactly the listed ones. */
static int same_files(const folder_plan *p, const file_list *l)
{
    if (p->count != l->count) return 0;
    for (size_t i = 0; i < p->count; i++)
        if (strcmp(p->files[i].out_rel, l->rel[i]) != 0) return 0;
    return 1;
}

/* The manifest's tensors of one file, under that file's names. */
static json_t *manifest_share(json_t *manifest, const char *file, const char *prefix)
{
    json_t *share = json_object(), *list = json_array();
    size_t i, n = strlen(prefix);
    json_t *item;
    json_array_foreach(json_object_get(manifest, "tensors"), i, item) {
        const char *f = json_string_value(json_object_get(item, "file"));
        const char *name = json_string_value(json_object_get(item, "name"));
        if (!f || strcmp(f, file) != 0) continue;
        json_t *copy = json_deep_copy(item);
        if (name && strncmp(name, prefix, n) == 0) json_object_set_new(copy, "name", json_string(name + n));
        json_array_append_new(list, copy);
    }
    json_object_set_new(share, "tensors", list);
    return share;
}

/* The normalisation values an output's configs give the new channels of the input layer: what
 * --norm-fill was, if it was given. 1 and the values in o when there are any. */
static int shown_fill(const widen_model *in, const widen_model *out, const widen_transform *tr, widen_apply_options *o)
{
    int found[2] = {0, 0};
    for (size_t k = 0; k < in->component_count; k++) {
        const widen_tensor_edit *input;
        const char *name;
        uint64_t channels;
        widen_error ignored;
        if (input_layer(in, k, tr, &input, &name, &channels, &ignored) || !input) continue;
        long fresh = -1;
        for (size_t n = 0; n < input->count && fresh < 0; n++)
            if (stat_source(&input->map[n]) < 0) fresh = (long)n;
        const widen_model_component *oc = NULL;
        for (size_t j = 0; j < out->component_count; j++)
            if (strcmp(out->components[j].rel, in->components[k].rel) == 0) oc = &out->components[j];
        if (fresh < 0 || !oc) continue;
        static const char *const keys[2][2] = {{"mean", "image_mean"}, {"std", "image_std"}};
        for (int s = 0; s < 2; s++) {
            const widen_json *cj = &oc->config.json, *pj = &oc->preprocessor.json;
            size_t lists[2] = {widen_json_get(cj, widen_json_get(cj, 0, "pretrained_cfg"), keys[s][0]),
                               widen_json_get(pj, 0, keys[s][1])};
            const widen_json *docs[2] = {cj, pj};
            for (int d = 0; d < 2 && !found[s]; d++) {
                if (lists[d] == WJ_NONE || docs[d]->nodes[lists[d]].kind != WJ_ARRAY) continue;
                size_t item = docs[d]->nodes[lists[d]].first;
                for (long n = 0; n < fresh && item != WJ_NONE; n++) item = docs[d]->nodes[item].next;
                if (item == WJ_NONE || docs[d]->nodes[item].kind != WJ_NUMBER) continue;
                double v = docs[d]->nodes[item].number;
                if (!isfinite(v)) continue; /* apply never writes one */
                if (s == 0) o->norm_fill_mean = v;
                else o->norm_fill_std = v;
                found[s] = 1;
            }
        }
    }
    o->norm_fill = found[0] || found[1];
    return o->norm_fill;
}

/* The manifest's files are the plan's, path and operation, and each of its tensors is of a rewritten
 * file (whose entries the file's verify checks one by one). */
static void check_manifest_files(json_t *manifest, const char *name, const folder_plan *p, widen_verify_report *r)
{
    json_t *files = json_object_get(manifest, "files"), *item;
    size_t i;
    if (!json_is_array(files) || json_array_size(files) != p->count)
        difference(r, "%s: its list of files is not the output's", name);
    json_array_foreach(files, i, item) {
        const char *path = json_string_value(json_object_get(item, "path"));
        const char *op = json_string_value(json_object_get(item, "op"));
        const plan_file *pf = i < p->count ? &p->files[i] : NULL;
        const char *want = !pf ? "" : pf->op == PLAN_COPY ? "copy" : pf->op == PLAN_REWRITE ? "rewrite" : "edit";
        if (!pf || !path || !op || strcmp(path, pf->out_rel) != 0 || strcmp(op, want) != 0) {
            difference(r, "%s: files[%zu] is not the output's (%s)", name, i, pf ? pf->out_rel : "one too many");
            break;
        }
    }
    json_array_foreach(json_object_get(manifest, "tensors"), i, item) {
        const char *file = json_string_value(json_object_get(item, "file"));
        int rewritten = 0;
        for (size_t k = 0; file && k < p->count && !rewritten; k++)
            rewritten = p->files[k].op == PLAN_REWRITE && strcmp(p->files[k].out_rel, file) == 0;
        if (!rewritten) {
            difference(r, "%s: tensors[%zu] is of no file the transform rewrites", name, i);
            break;
        }
    }
}

static widen_status verify_folder(const char *input, const char *output, const widen_verify_options *o,
                                  widen_verify_report *r, widen_error *err)
{
    const char *manifest_path = o->manifest_path;
    widen_model *in = NULL, *out = NULL;
    widen_transform *tr = NULL;
    json_t *manifest = NULL;
    folder_plan p = {0};
    file_list l = {0}, dirs = {0};
    widen_status st = widen_model_open(input, &in, err);
    if (!st && !in->root) st = widen_fail(err, WIDEN_EUSAGE, "%s: a file; %s is a folder: verify compares like with like",
                                          input, output);
    if (!st) st = widen_model_open(output, &out, err);
    if (!st && !out->root) st = widen_fail(err, WIDEN_EUSAGE, "%s: a file; %s is a folder: verify compares like with like",
                                           output, input);
    if (st) goto done;
    if (manifest_path) {
        if (!(manifest = widen_manifest_load(manifest_path, err))) {
            st = err ? err->status : WIDEN_EFORMAT;
            goto done;
        }
        char *json = json_dumps(json_object_get(manifest, "transform"), JSON_COMPACT);
        st = json ? widen_transform_from_json(json, &tr, err) : widen_fail(err, WIDEN_EIO, "out of memory");
        free(json);
    } else {
        st = recorded_transform(out, &tr, r, err);
    }
    if (st || r->differences) goto done;
    list_files(out->root, "", 0, &l, &dirs, r);
    if (l.count) qsort(l.rel, l.count, sizeof *l.rel, by_string);
    /* the output format: each file's own, or one for all (a conversion) */
    static const char *const formats[] = {NULL, "safetensors", "pt"};
    widen_apply_options quiet, files_only;
    widen_apply_options_init(&quiet, sizeof quiet);
    files_only = quiet;
    files_only.no_config = 1; /* which files there are does not depend on the configs' edits */
    int found = 0, chosen = 0;
    for (int f = 0; f < 3 && !found && !st; f++) {
        widen_error ignored;
        folder_plan q;
        widen_status s = plan_build(in, tr, formats[f], &files_only, &q, f ? &ignored : err);
        if (s && !f) {
            if (s != WIDEN_EUSAGE) {
                st = s;
                break;
            }
            difference(r, "%s: the recorded transform does not apply to %s: %s", output, input, err->message);
            break;
        }
        if (s) continue;
        if (same_files(&q, &l) || f == 0) {
            plan_free(&p);
            p = q;
            found = same_files(&q, &l);
            chosen = f;
        } else {
            plan_free(&q);
        }
    }
    if (st || r->differences) goto done;
    if (!found) {
        /* what is missing, what is extra */
        size_t i = 0, k = 0;
        while (i < p.count || k < l.count) {
            int c = i == p.count ? 1 : k == l.count ? -1 : strcmp(p.files[i].out_rel, l.rel[k]);
            if (c < 0) difference(r, "%s: %s is missing", output, p.files[i++].out_rel);
            else if (c > 0) difference(r, "%s: %s is not a file of the input's model folder with this transform", output,
                                       l.rel[k++]);
            else i++, k++;
        }
        goto done;
    }
    /* folders that hold none of the planned files */
    for (size_t i = 0; i < dirs.count; i++) {
        size_t n = strlen(dirs.rel[i]), a = 0, b = p.count;
        while (a < b) {
            size_t mid = a + (b - a) / 2;
            if (strcmp(p.files[mid].out_rel, dirs.rel[i]) < 0) a = mid + 1;
            else b = mid;
        }
        int holds = 0;
        for (; a < p.count && !holds && strncmp(p.files[a].out_rel, dirs.rel[i], n) == 0; a++)
            holds = p.files[a].out_rel[n] == '/';
        if (!holds) difference(r, "%s: %s/ is a folder the output should not have", output, dirs.rel[i]);
    }
    /* the configs: as the manifest says apply was told; without one, as apply leaves them by default,
     * with --no-config, or with the --norm-fill values the output shows */
    widen_apply_options sets[3];
    size_t n_sets = 0;
    json_t *configs = manifest ? json_object_get(manifest, "configs") : NULL;
    sets[n_sets++] = quiet;
    if (manifest) {
        /* what apply writes: {"follow": false}, {"follow": true}, {"follow": true, "norm_fill": [m, s]} */
        json_t *follow = json_object_get(configs, "follow"), *fill = json_object_get(configs, "norm_fill");
        int fill_ok = json_is_array(fill) && json_array_size(fill) == 2 && json_is_number(json_array_get(fill, 0)) &&
                      json_is_number(json_array_get(fill, 1));
        if (!json_is_object(configs) || !json_is_boolean(follow) || (fill && (!fill_ok || json_is_false(follow))) ||
            json_object_size(configs) != 1u + (fill != NULL)) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: not a widen folder manifest (its \"configs\" is not what apply "
                            "writes)", manifest_path);
            goto done;
        }
        sets[0].no_config = json_is_false(follow);
        if (fill) {
            sets[0].norm_fill = 1;
            sets[0].norm_fill_mean = json_number_value(json_array_get(fill, 0));
            sets[0].norm_fill_std = json_number_value(json_array_get(fill, 1));
        }
    } else {
        sets[n_sets] = quiet;
        sets[n_sets++].no_config = 1;
        sets[n_sets] = quiet;
        if (shown_fill(in, out, tr, &sets[n_sets])) n_sets++;
    }
    for (size_t k = 0; k < n_sets; k++) {
        folder_plan q;
        widen_error ignored;
        if (plan_build(in, tr, formats[chosen], &sets[k], &q, &ignored)) continue;
        int match = 1;
        for (size_t i = 0; i < q.count && match; i++) {
            plan_file *pf = &q.files[i];
            if (!pf->doc || pf->component != SIZE_MAX) continue;
            char *from = join(in->root, pf->in_rel), *to = join(out->root, pf->out_rel), *text = NULL;
            size_t len = 0;
            if (pf->op == PLAN_COPY) match = from && to && same_bytes(to, NULL, 0, from, NULL, NULL) == 1;
            else match = to && (text = widen_json_apply(pf->doc->text, pf->doc->size, &pf->edits, &len)) &&
                         same_bytes(to, text, len, NULL, NULL, NULL) == 1;
            free(text);
            free(from);
            free(to);
        }
        if (match) {
            plan_free(&p);
            p = q;
            break;
        }
        plan_free(&q);
    }
    if (manifest) check_manifest_files(manifest, manifest_path, &p, r);
    /* progress: each rewritten file's share is twice its size (replayed, then read back), each copied
     * file's its size (compared) */
    widen_meter meter = {.fn = o->progress, .user = o->progress_user};
    for (size_t i = 0; i < p.count; i++) {
        plan_file *pf = &p.files[i];
        char *to = pf->op == PLAN_DOC ? NULL : join(out->root, pf->out_rel);
        struct stat sb;
        pf->verify_share = to && stat(to, &sb) == 0 ? (uint64_t)sb.st_size * (pf->op == PLAN_REWRITE ? 2 : 1) : 0;
        meter.total += pf->verify_share;
        free(to);
    }
    widen_verify_work work = {.threads = o->threads, .progress = meter.fn ? widen_meter_progress : NULL,
                              .progress_user = &meter};
    for (int pass = 0; pass < 2 && !st; pass++) {
        for (size_t i = 0; i < p.count && !st; i++) {
            plan_file *pf = &p.files[i];
            if ((pf->op == PLAN_REWRITE) != (pass == 0)) continue;
            widen_meter_next(&meter, pf->verify_share);
            char *from = join(in->root, pf->in_rel), *to = join(out->root, pf->out_rel);
            if (!from || !to) st = widen_fail(err, WIDEN_EIO, "out of memory");
            else if (pf->op == PLAN_COPY) {
                r->tensors += pf->part != SIZE_MAX ? in->files[pf->part].ckpt->count : 0;
                int same = same_bytes(to, NULL, 0, from, meter.fn ? widen_meter_progress : NULL, &meter);
                if (same < 0)
                    st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", output);
                else if (!same)
                    difference(r, "%s: %s differs from the input's%s", output, pf->out_rel,
                               pf->part != SIZE_MAX && !manifest_path ? " (no transform recorded for it)" : "");
            } else if (pf->op == PLAN_REWRITE) {
                const widen_model_part *part = &in->files[pf->part];
                char *provenance = widen_transform_to_json(pf->share);
                json_t *share = manifest ? manifest_share(manifest, pf->out_rel, in->components[part->component].prefix) : NULL;
                if (!provenance) st = widen_fail(err, WIDEN_EIO, "out of memory");
                else {
                    /* the sizes the index needs, as apply counted them */
                    widen_status s = widen_verify_run(from, to, pf->share, provenance, share, manifest_path, &work,
                                                      &pf->record, r, err);
                    if (s != WIDEN_OK && s != WIDEN_DIFFERENT) st = s;
                }
                json_decref(share);
                free(provenance);
            } else {
                char *text = NULL;
                size_t len = 0;
                if (pf->component != SIZE_MAX) st = index_text(in, &p, pf, out->root, &text, &len, err);
                else if (!(text = widen_json_apply(pf->doc->text, pf->doc->size, &pf->edits, &len)))
                    st = widen_fail(err, WIDEN_EIO, "out of memory");
                if (!st && same_bytes(to, text, len, NULL, NULL, NULL) != 1)
                    difference(r, "%s: %s is not the input's with the edits the transform makes (%s)", output,
                               pf->out_rel, pf->component != SIZE_MAX ? "shard names, total_size" : "the input layer's "
                               "channels and normalisation");
                free(text);
            }
            free(from);
            free(to);
        }
    }
    /* a file that differs is read no further: the run is over all the same */
    if (!st && widen_meter_end(&meter) && !r->differences) st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", output);
done:
    if (!st) st = r->differences ? WIDEN_DIFFERENT : WIDEN_OK;
    for (size_t i = 0; i < l.count; i++) free(l.rel[i]);
    for (size_t i = 0; i < dirs.count; i++) free(dirs.rel[i]);
    free(l.rel);
    free(dirs.rel);
    plan_free(&p);
    json_decref(manifest);
    widen_transform_free(tr);
    widen_model_close(in);
    widen_model_close(out);
    return st;
}

widen_status widen_model_verify(const char *input, const char *output, const widen_verify_options *options,
                                widen_verify_report *report, widen_error *err)
{
    widen_verify_options o;
    widen_verify_report full;
    widen_verify_report_init(&full, sizeof full);
    widen_status st = widen_verify_begin("widen_model_verify", input, output, options, report, &o, err);
    if (st) return st;
    if (!o.threads) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = cpus > 0 ? (unsigned)cpus : 1;
    }
    struct stat a, b;
    size_t ni = strlen(input), no = strlen(output), k = strlen(".index.json");
    int in_folder = stat(input, &a) == 0 && (S_ISDIR(a.st_mode) || (ni >= k && strcmp(input + ni - k, ".index.json") == 0));
    int out_folder = stat(output, &b) == 0 && (S_ISDIR(b.st_mode) || (no >= k && strcmp(output + no - k, ".index.json") == 0));
    if (!(st = widen_isa_init(err)))
        st = !in_folder && !out_folder ? widen_verify_file(input, output, &o, &full, err)
                                       : verify_folder(input, output, &o, &full, err);
    widen_verify_end(&full, report);
    return st;
}
