/* model.c: opening a model: one checkpoint file, or a folder whose weights are shards with an index,
 * single files, or diffusers components, beside configs and other files. Which files the model is
 * made of is decided here once, the same way for apply and for verify. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"

#define MAX_FOLDER_FILES 1000000u
#define MAX_FOLDER_DEPTH 16

/* ---------------------------------------------------------------------------------------------- */
/* Names of files                                                                                   */

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && strcmp(s + n - k, tail) == 0;
}

static const char *base_name(const char *rel)
{
    const char *slash = strrchr(rel, '/');
    return slash ? slash + 1 : rel;
}

/* The files transformers' Trainer writes beside the weights, which are not weights. */
static int trainer_file(const char *name)
{
    return strcmp(name, "training_args.bin") == 0 || strcmp(name, "optimizer.pt") == 0 ||
           strcmp(name, "scheduler.pt") == 0 || strcmp(name, "scaler.pt") == 0 ||
           (strncmp(name, "rng_state", 9) == 0 && ends_with(name, ".pth"));
}

/* 1: safetensors weights, 2: torch weights, 0: neither. */
static int weight_family(const char *name)
{
    if (ends_with(name, ".safetensors")) return 1;
    if ((ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth")) && !trainer_file(name)) return 2;
    return 0;
}

/* A variant of a model's weights, as transformers and diffusers name them: a dot inside the name
 * before its extension ("diffusion_pytorch_model.fp16.safetensors", "model.fp16-00001-of-00002.
 * safetensors"), which loaders read only when asked for that variant. */
static int variant_name(const char *name)
{
    const char *ext = strrchr(name, '.');
    return ext && memchr(name, '.', (size_t)(ext - name)) != NULL;
}

/* Weights in formats widen does not rewrite (TensorFlow, Flax, ONNX, GGUF, Lightning/original
 * checkpoints): beside a widened model they would describe the old input. */
static int foreign_weights(const char *name)
{
    static const char *const exts[] = {".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf", ".ckpt", ".tflite",
                                       ".mlmodel", ".keras"};
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
        if (ends_with(name, exts[i])) return 1;
    return 0;
}

/* 1 / 2 for an index of safetensors / torch shards, 3 for another *.index.json, 4 for a variant's
 * index ("model.safetensors.index.fp16.json"), 0 for anything else. */
static int index_family(const char *name)
{
    const char *mid = strstr(name, ".index.");
    if (mid && ends_with(name, ".json") && !ends_with(name, ".index.json") && strchr(mid + 7, '.') == name + strlen(name) - 5)
        return 4;
    if (!ends_with(name, ".index.json")) return 0;
    size_t n = strlen(name) - strlen(".index.json");
    char stem[4096];
    if (n >= sizeof stem || n == 0) return 0;
    memcpy(stem, name, n);
    stem[n] = '\0';
    int family = weight_family(stem);
    return family ? family : 3;
}

char *widen_model_converted_name(const char *rel, const char *format)
{
    const char *base = base_name(rel);
    size_t dir_len = (size_t)(base - rel);
    int index = ends_with(base, ".index.json");
    size_t n = strlen(base) - (index ? strlen(".index.json") : 0);
    const char *exts[] = {".safetensors", ".bin", ".pth", ".pt"};
    size_t stem_len = n;
    for (int i = 0; i < 4; i++) {
        size_t k = strlen(exts[i]);
        if (n >= k && strncmp(base + n - k, exts[i], k) == 0) {
            stem_len = n - k;
            break;
        }
    }
    int to_st = strcmp(format, "safetensors") == 0;
    /* transformers' names: model*.safetensors <-> pytorch_model*.bin; diffusers keeps its stem */
    const char *drop = "", *add = "";
    if (to_st && strncmp(base, "pytorch_model", 13) == 0 && stem_len >= 13) drop = "pytorch_";
    else if (!to_st && strncmp(base, "model", 5) == 0) add = "pytorch_";
    size_t size = strlen(rel) + 32;
    char *out = malloc(size);
    if (!out) return NULL;
    snprintf(out, size, "%.*s%s%.*s%s%s", (int)dir_len, rel, add, (int)(stem_len - strlen(drop)), base + strlen(drop),
             to_st ? ".safetensors" : ".bin", index ? ".index.json" : "");
    return out;
}

/* ---------------------------------------------------------------------------------------------- */
/* Documents                                                                                        */

char *widen_path_join(const char *root, const char *rel)
{
    size_t size = strlen(root) + strlen(rel) + 2;
    char *out = malloc(size);
    if (out) snprintf(out, size, "%s/%s", root, rel);
    return out;
}

widen_status widen_model_read_doc(const char *root, const char *rel, widen_model_doc *doc, widen_error *err)
{
    memset(doc, 0, sizeof *doc);
    char *path = widen_path_join(root, rel);
    if (!path || !(doc->rel = strdup(rel))) {
        free(path);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    widen_status st = WIDEN_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat s;
    if (fd < 0 || fstat(fd, &s) != 0) st = widen_fail(err, WIDEN_EIO, "%s: cannot read: %s", path, strerror(errno));
    else if (!S_ISREG(s.st_mode)) st = widen_fail(err, WIDEN_EFORMAT, "%s: not a regular file", path);
    else if ((uint64_t)s.st_size > WIDEN_JSON_MAX_BYTES)
        st = widen_fail(err, WIDEN_EFORMAT, "%s: %llu bytes, more than widen reads of a JSON document (%u MiB)", path,
                        (unsigned long long)s.st_size, WIDEN_JSON_MAX_BYTES >> 20);
    else if (!(doc->text = malloc((size_t)s.st_size + 1))) st = widen_fail(err, WIDEN_EIO, "out of memory");
    size_t got = 0;
    while (!st && got < (size_t)s.st_size) {
        ssize_t r = read(fd, doc->text + got, (size_t)s.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) st = widen_fail(err, WIDEN_EIO, "%s: cannot read: %s", path, r < 0 ? strerror(errno) : "it shrank");
        else got += (size_t)r;
    }
    if (fd >= 0) close(fd);
    int parsed = 0;
    if (!st) {
        doc->text[got] = '\0';
        doc->size = got;
        st = widen_json_parse(doc->text, doc->size, path, &doc->json, err);
        parsed = 1;
    }
    if (!st && doc->json.nodes[0].kind != WJ_OBJECT) {
        st = widen_fail(err, WIDEN_EFORMAT, "%s: not a JSON object", path);
        widen_json_free(&doc->json);
    }
    free(path);
    /* a document that was read but is not what widen reads keeps its bytes (to be copied as they are) */
    if (st && !parsed) widen_model_doc_free(doc);
    return st;
}

void widen_model_doc_free(widen_model_doc *doc)
{
    free(doc->error);
    widen_json_free(&doc->json);
    free(doc->text);
    free(doc->rel);
    memset(doc, 0, sizeof *doc);
}

/* ---------------------------------------------------------------------------------------------- */
/* The folder's files                                                                               */

typedef struct listed {
    char *rel;
    uint64_t size;
} listed;

typedef struct listing {
    listed *items;      /* sorted by path once the walk is done */
    size_t count, cap;
    widen_dir_id *dirs; /* every folder the walk entered, links followed */
    size_t dir_count;
    int skipped;        /* .git or .cache/huggingface was there */
} listing;

static widen_status list_folder(const char *root, const char *rel, int depth, listing *l, widen_error *err)
{
    char *path = rel[0] ? widen_path_join(root, rel) : strdup(root);
    if (!path) return widen_fail(err, WIDEN_EIO, "out of memory");
    if (depth > MAX_FOLDER_DEPTH) {
        widen_status st = widen_fail(err, WIDEN_EFORMAT, "%s: folders nested more than %d deep (a link to a folder "
                                     "above?)", path, MAX_FOLDER_DEPTH);
        free(path);
        return st;
    }
    DIR *d = opendir(path);
    struct stat self;
    widen_dir_id *grown_dirs = d && fstat(dirfd(d), &self) == 0 ? realloc(l->dirs, (l->dir_count + 1) * sizeof *l->dirs) : NULL;
    if (!d || !grown_dirs) {
        widen_status st = !d ? widen_fail(err, errno == ELOOP ? WIDEN_EFORMAT : WIDEN_EIO, "%s: cannot read the folder: %s",
                                          path, strerror(errno))
                             : widen_fail(err, WIDEN_EIO, "out of memory");
        if (d) closedir(d);
        free(path);
        return st;
    }
    l->dirs = grown_dirs;
    l->dirs[l->dir_count++] = (widen_dir_id){self.st_dev, self.st_ino};
    widen_status st = WIDEN_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        /* a clone's history and a download's records describe the input's files, not a new model's */
        if ((!rel[0] && strcmp(e->d_name, ".git") == 0) || (strcmp(rel, ".cache") == 0 && strcmp(e->d_name, "huggingface") == 0)) {
            l->skipped = 1;
            continue;
        }
        size_t size = strlen(rel) + strlen(e->d_name) + 2;
        char *child = malloc(size);
        if (!child) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            break;
        }
        snprintf(child, size, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        struct stat s;
        if (fstatat(dirfd(d), e->d_name, &s, 0) != 0) {
            st = widen_fail(err, errno == ENOENT || errno == ELOOP ? WIDEN_EFORMAT : WIDEN_EIO, "%s/%s: %s", path, e->d_name,
                            errno == ENOENT ? "a link to nothing" : strerror(errno));
        } else if (S_ISDIR(s.st_mode)) {
            st = list_folder(root, child, depth + 1, l, err);
        } else if (!S_ISREG(s.st_mode)) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s/%s: not a regular file or a folder", path, e->d_name);
        } else if (l->count >= MAX_FOLDER_FILES) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: more than %u files", root, MAX_FOLDER_FILES);
        } else {
            if (l->count == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 64;
                listed *grown = realloc(l->items, cap * sizeof *grown);
                if (!grown) st = widen_fail(err, WIDEN_EIO, "out of memory");
                else {
                    l->items = grown;
                    l->cap = cap;
                }
            }
            if (!st) {
                l->items[l->count++] = (listed){child, (uint64_t)s.st_size};
                child = NULL;
            }
        }
        free(child);
    }
    closedir(d);
    free(path);
    return st;
}

static int by_rel(const void *a, const void *b)
{
    return strcmp(((const listed *)a)->rel, ((const listed *)b)->rel);
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entry called rel, or -1. */
static long find_listed(const listing *l, const char *rel)
{
    listed key = {(char *)rel, 0};
    const listed *hit = l->count ? bsearch(&key, l->items, l->count, sizeof *l->items, by_rel) : NULL;
    return hit ? (long)(hit - l->items) : -1;
}

/* [lo, hi): the sorted listing's entries below folder prefix ("unet/"; "" for all of them): paths
 * that share a prefix are contiguous once sorted. */
static void prefix_range(const listing *l, const char *prefix, size_t *lo, size_t *hi)
{
    size_t n = strlen(prefix), a = 0, b = l->count;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (strcmp(l->items[mid].rel, prefix) < 0) a = mid + 1;
        else b = mid;
    }
    *lo = a;
    while (a < l->count && strncmp(l->items[a].rel, prefix, n) == 0) a++;
    *hi = a;
}

/* ---------------------------------------------------------------------------------------------- */
/* Opening                                                                                          */

static widen_status add_file(widen_model *m, size_t component, const char *rel, uint64_t share, widen_error *err)
{
    widen_model_part *grown = realloc(m->files, (m->file_count + 1) * sizeof *grown);
    if (!grown) return widen_fail(err, WIDEN_EIO, "out of memory");
    m->files = grown;
    widen_model_part *f = &m->files[m->file_count];
    memset(f, 0, sizeof *f);
    f->component = component;
    if (!(f->rel = strdup(rel))) return widen_fail(err, WIDEN_EIO, "out of memory");
    m->file_count++;
    char *path = m->root ? widen_path_join(m->root, rel) : strdup(rel);
    if (!path) return widen_fail(err, WIDEN_EIO, "out of memory");
    if (m->open_meter) widen_meter_next(m->open_meter, share);
    widen_status st = widen_open_ex(path, m->opening, &f->ckpt, err);
    free(path);
    return st;
}

/* The shards an index names: the distinct values of its weight_map, each a plain file name beside
 * it, sorted. */
static widen_status index_shards(widen_model *m, widen_model_component *c, char ***out, size_t *count, widen_error *err)
{
    const widen_json *j = &c->index.json;
    char *path = widen_path_join(m->root, c->index.rel);
    widen_status st = WIDEN_OK;
    size_t map = widen_json_get(j, 0, "weight_map"), meta = widen_json_get(j, 0, "metadata");
    *out = NULL;
    *count = 0;
    if (map == WJ_NONE || j->nodes[map].kind != WJ_OBJECT)
        st = widen_fail(err, WIDEN_EFORMAT, "%s: not a shard index (no \"weight_map\" object)", path);
    if (!st && meta != WJ_NONE) {
        size_t total = widen_json_get(j, meta, "total_size");
        if (j->nodes[meta].kind != WJ_OBJECT)
            st = widen_fail(err, WIDEN_EFORMAT, "%s: \"metadata\" is not an object", path);
        else if (total != WJ_NONE && !(j->nodes[total].kind == WJ_NUMBER &&
                                       ((j->nodes[total].exact && !j->nodes[total].negative &&
                                         j->nodes[total].whole <= (uint64_t)INT64_MAX) ||
                                        (!j->nodes[total].integer && j->nodes[total].number >= 0 &&
                                         j->nodes[total].number <= 9007199254740992.0 &&
                                         j->nodes[total].number == (double)(uint64_t)j->nodes[total].number))))
            st = widen_fail(err, WIDEN_EFORMAT, "%s: \"total_size\" is not a byte count", path);
    }
    widen_table seen = {0};
    char **names = NULL;
    if (!st && !(names = calloc(j->nodes[map].count + 1, sizeof *names))) st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t k = st ? WJ_NONE : j->nodes[map].first; k != WJ_NONE && !st; k = j->nodes[k].next) {
        const widen_json_node *v = &j->nodes[k];
        if (v->kind != WJ_STRING) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: weight_map[\"%.200s\"] is not a file name", path, v->key);
            break;
        }
        if (!v->len || v->len != strlen(v->str) || strchr(v->str, '/') || strcmp(v->str, ".") == 0 ||
            strcmp(v->str, "..") == 0) {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: weight_map[\"%.200s\"] names \"%.200s\", which is not a file "
                            "beside the index", path, v->key, v->str);
            break;
        }
        int added = widen_table_put(&seen, v->str, v->len, 0, NULL);
        if (added < 0) st = widen_fail(err, WIDEN_EIO, "out of memory");
        else if (added) names[(*count)++] = (char *)v->str;
    }
    widen_table_free(&seen);
    if (!st && *count == 0) st = widen_fail(err, WIDEN_EFORMAT, "%s: its weight_map names no tensors", path);
    if (!st) qsort(names, *count, sizeof *names, by_string);
    if (st) {
        free(names);
        names = NULL;
        *count = 0;
    }
    free(path);
    *out = names;
    return st;
}

/* Every name of the index is in the shard it names, and every tensor of a shard is listed there. */
static widen_status check_index(widen_model *m, widen_model_component *c, widen_error *err)
{
    const widen_json *j = &c->index.json;
    size_t map = widen_json_get(j, 0, "weight_map");
    char *path = widen_path_join(m->root, c->index.rel);
    widen_status st = path ? WIDEN_OK : widen_fail(err, WIDEN_EIO, "out of memory");
    size_t listed = 0;
    widen_table shard_of = {0};
    for (size_t f = c->first_file; !st && f < c->first_file + c->file_count; f++)
        if (widen_table_put(&shard_of, base_name(m->files[f].rel), strlen(base_name(m->files[f].rel)), f, NULL) < 0)
            st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t k = st ? WJ_NONE : j->nodes[map].first; k != WJ_NONE && !st; k = j->nodes[k].next, listed++) {
        const widen_json_node *v = &j->nodes[k];
        size_t f;
        widen_table_get(&shard_of, v->str, v->len, &f);
        if (v->key_len != strlen(v->key) || widen_tensor_find(m->files[f].ckpt, v->key) < 0)
            st = widen_fail(err, WIDEN_EFORMAT, "%s: names tensor '%.200s' in %s, which does not hold it", path, v->key,
                            m->files[f].rel);
    }
    size_t held = 0;
    for (size_t f = c->first_file; !st && f < c->first_file + c->file_count; f++) held += m->files[f].ckpt->count;
    /* every listed name is in its shard, and listed names are distinct: as many listed as held means
     * every held name is listed, at its shard. Otherwise, find one that is not. */
    widen_table listed_names = {0};
    for (size_t k = st || held == listed ? WJ_NONE : j->nodes[map].first; k != WJ_NONE; k = j->nodes[k].next)
        if (widen_table_put(&listed_names, j->nodes[k].key, j->nodes[k].key_len, k, NULL) < 0) {
            st = widen_fail(err, WIDEN_EIO, "out of memory");
            break;
        }
    for (size_t f = c->first_file; !st && held != listed && f < c->first_file + c->file_count; f++) {
        const widen_checkpoint *ck = m->files[f].ckpt;
        for (size_t i = 0; i < ck->count && !st; i++) {
            size_t k;
            const char *name = ck->tensors[i].name;
            int found = widen_table_get(&listed_names, name, strlen(name), &k);
            if (!found || strcmp(j->nodes[k].str, base_name(m->files[f].rel)) != 0)
                st = widen_fail(err, WIDEN_EFORMAT, "%s: %s holds tensor '%.200s', which the index %s", path,
                                m->files[f].rel, name, !found ? "does not list" : "gives to another shard");
        }
    }
    widen_table_free(&listed_names);
    widen_table_free(&shard_of);
    free(path);
    return st;
}

static widen_status add_other(widen_model *m, const char *rel, uint64_t size, widen_other_kind kind, widen_error *err)
{
    widen_model_other *grown = realloc(m->others, (m->other_count + 1) * sizeof *grown);
    if (!grown) return widen_fail(err, WIDEN_EIO, "out of memory");
    m->others = grown;
    if (!(m->others[m->other_count].rel = strdup(rel))) return widen_fail(err, WIDEN_EIO, "out of memory");
    m->others[m->other_count].kind = kind;
    m->others[m->other_count++].size = size;
    return WIDEN_OK;
}

/* The weights of one component folder (rel: "" or "unet"), from the listing. `explicit_index`: the
 * index the user named. */
static widen_status open_component(widen_model *m, const listing *l, const char *rel, const char *explicit_index,
                                   unsigned char *used, widen_error *err)
{
    widen_model_component *grown = realloc(m->components, (m->component_count + 1) * sizeof *grown);
    if (!grown) return widen_fail(err, WIDEN_EIO, "out of memory");
    m->components = grown;
    size_t ci = m->component_count++;
    widen_model_component *c = &m->components[ci];
    memset(c, 0, sizeof *c);
    c->first_file = m->file_count;
    size_t rel_len = strlen(rel);
    if (!(c->rel = strdup(rel)) || !(c->prefix = malloc(rel_len + 2))) return widen_fail(err, WIDEN_EIO, "out of memory");
    snprintf(c->prefix, rel_len + 2, "%s%s", rel, rel_len ? "/" : "");
    size_t lo, hi, skip = strlen(c->prefix);
    prefix_range(l, c->prefix, &lo, &hi);
    /* the component's own files: index, weights, configs */
    const char *chosen_index = NULL;
    int family = 0;
    char clash[2][4096] = {"", ""};
    for (size_t i = lo; i < hi; i++) {
        const char *r = l->items[i].rel, *name = r + skip;
        if (strchr(name, '/')) continue;
        /* the index the user named is the index, whatever its name; else the known kinds, safetensors
         * first, then torch, then any other *.index.json */
        int fam = explicit_index ? (strcmp(name, explicit_index) == 0) : index_family(name);
        if (!fam) continue;
        if (!chosen_index || fam < family) {
            chosen_index = r;
            family = fam;
            clash[0][0] = '\0';
        } else if (fam == family) {
            snprintf(clash[0], sizeof clash[0], "%s", chosen_index);
            snprintf(clash[1], sizeof clash[1], "%s", r);
        }
    }
    if (clash[0][0])
        return widen_fail(err, WIDEN_EUSAGE, "%s: two indexes of the same format, %s and %s: name the one to use",
                          m->root, clash[0], clash[1]);
    if (chosen_index) {
        widen_status st = widen_model_read_doc(m->root, chosen_index, &c->index, err);
        char **shards;
        size_t n;
        if (st || (st = index_shards(m, c, &shards, &n, err))) return st;
        for (size_t k = 0; k < n && !st; k++) {
            char *shard_rel = widen_path_join(rel_len ? rel : ".", shards[k]);
            if (!shard_rel) {
                st = widen_fail(err, WIDEN_EIO, "out of memory");
                break;
            }
            long hit = find_listed(l, rel_len ? shard_rel : shard_rel + 2);
            if (hit < 0)
                st = widen_fail(err, WIDEN_EFORMAT, "%s/%s: names shard %s, which is missing", m->root, chosen_index,
                                shards[k]);
            else if (used[hit])
                st = widen_fail(err, WIDEN_EFORMAT, "%s/%s: names %s as a shard, which is not weights", m->root,
                                chosen_index, shards[k]);
            else {
                used[hit] = 1;
                st = add_file(m, ci, l->items[hit].rel, l->items[hit].size, err);
            }
            free(shard_rel);
        }
        free(shards);
        c->file_count = m->file_count - c->first_file;
        if (st || (st = check_index(m, c, err))) return st;
        used[find_listed(l, chosen_index)] = 1;
    } else {
        /* no index: the weight files of one format (safetensors first, as transformers and diffusers
         * load them) */
        int plain = 0;
        for (size_t i = lo; i < hi; i++) {
            const char *name = l->items[i].rel + skip;
            int fam = strchr(name, '/') ? 0 : weight_family(name);
            if (fam && (!family || fam < family)) family = fam;
        }
        /* variants (fp16, non_ema) are left out where the weights themselves are there, as loaders
         * read those by default */
        for (size_t i = lo; i < hi && family; i++) {
            const char *name = l->items[i].rel + skip;
            plain |= !strchr(name, '/') && weight_family(name) == family && !variant_name(name);
        }
        for (size_t i = lo; i < hi && family; i++) {
            const char *name = l->items[i].rel + skip;
            if (strchr(name, '/') || weight_family(name) != family || (plain && variant_name(name))) continue;
            used[i] = 1;
            widen_status st = add_file(m, ci, l->items[i].rel, l->items[i].size, err);
            if (st) return st;
        }
        c->file_count = m->file_count - c->first_file;
    }
    m->json_nodes += c->index.json.count;
    /* configs: read when they are there; one that cannot be read is an error only where it is needed */
    const char *docs[2] = {"config.json", "preprocessor_config.json"};
    widen_model_doc *targets[2] = {&c->config, &c->preprocessor};
    for (int d = 0; d < 2; d++) {
        char *doc_rel = rel_len ? widen_path_join(rel, docs[d]) : strdup(docs[d]);
        if (!doc_rel) return widen_fail(err, WIDEN_EIO, "out of memory");
        long hit = find_listed(l, doc_rel);
        if (hit >= 0 && used[hit]) {
            free(doc_rel);
            return widen_fail(err, WIDEN_EFORMAT, "%s/%s: a config the index names as a shard", m->root, docs[d]);
        }
        if (hit >= 0) {
            widen_error doc_err;
            if (widen_model_read_doc(m->root, doc_rel, targets[d], &doc_err)) {
                if (doc_err.status != WIDEN_EFORMAT || !targets[d]->text) {
                    *err = doc_err;
                    free(doc_rel);
                    return doc_err.status;
                }
                if (!(targets[d]->error = strdup(doc_err.message))) {
                    free(doc_rel);
                    return widen_fail(err, WIDEN_EIO, "out of memory");
                }
            }
        }
        free(doc_rel);
        m->json_nodes += targets[d]->json.count;
    }
    if (m->json_nodes > 2 * WIDEN_JSON_MAX_NODES)
        return widen_fail(err, WIDEN_EFORMAT, "%s: its JSON documents hold more than %u values together, more than "
                          "widen reads", m->root, 2 * WIDEN_JSON_MAX_NODES);
    return WIDEN_OK;
}

static widen_status open_folder(widen_model *m, const char *explicit_index, widen_error *err)
{
    listing l = {0};
    widen_status st = list_folder(m->root, "", 0, &l, err);
    unsigned char *used = NULL;
    if (!st && l.count) qsort(l.items, l.count, sizeof *l.items, by_rel);
    for (size_t i = 0; m->open_meter && i < l.count; i++) m->open_meter->total += l.items[i].size;
    if (!st && !(used = calloc(l.count + 1, 1))) st = widen_fail(err, WIDEN_EIO, "out of memory");
    if (!st) st = open_component(m, &l, "", explicit_index, used, err);
    if (!st && !explicit_index) {
        /* component folders: the first-level folders that hold weights or an index (diffusers: unet/,
         * vae/, ...), in one pass over the sorted listing */
        const char *last = NULL;
        size_t last_len = 0;
        for (size_t i = 0; i < l.count && !st; i++) {
            const char *r = l.items[i].rel, *slash = strchr(r, '/');
            if (!slash || strchr(slash + 1, '/') || !(weight_family(slash + 1) || index_family(slash + 1))) continue;
            size_t len = (size_t)(slash - r);
            if (last && len == last_len && strncmp(r, last, len) == 0) continue;
            last = r;
            last_len = len;
            char *dir = strndup(r, len);
            st = dir ? open_component(m, &l, dir, NULL, used, err) : widen_fail(err, WIDEN_EIO, "out of memory");
            free(dir);
        }
    }
    if (!st && m->file_count == 0)
        st = widen_fail(err, WIDEN_EUSAGE, "%s: holds no weights widen rewrites (no *.safetensors, *.bin, *.pt or "
                        "*.pth, no *.index.json%s)", m->path,
                        l.count ? "; a single checkpoint of another kind is read when named as a file" : "");
    widen_table components = {0};
    for (size_t c = 0; c < m->component_count && !st; c++)
        if (widen_table_put(&components, m->components[c].rel, strlen(m->components[c].rel), c, NULL) < 0)
            st = widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t i = 0; i < l.count && !st; i++) {
        m->size += l.items[i].size;
        if (used[i]) continue;
        /* weights beside the model's that it is not made of: another format of it, another index */
        const char *r = l.items[i].rel, *slash = strchr(r, '/'), *name = base_name(r);
        size_t c;
        int in_component = !slash ? widen_table_get(&components, "", 0, &c)
                                  : !strchr(slash + 1, '/') && widen_table_get(&components, r, (size_t)(slash - r), &c);
        int weights = (in_component && (weight_family(name) || index_family(name))) || foreign_weights(name);
        st = add_other(m, r, l.items[i].size, weights ? WIDEN_OTHER_LEFT_OUT : WIDEN_OTHER_COPY, err);
    }
    widen_table_free(&components);
    for (size_t i = 0; i < l.count; i++) free(l.items[i].rel);
    free(l.items);
    m->dirs = l.dirs;
    m->dir_count = l.dir_count;
    m->skipped_history = l.skipped;
    free(used);
    return st;
}

static widen_status name_tensors(widen_model *m, widen_error *err)
{
    size_t total = 0;
    for (size_t f = 0; f < m->file_count; f++) total += m->files[f].ckpt->count;
    if (!(m->names = calloc(total + 1, sizeof *m->names)) || !(m->tensor_file = calloc(total + 1, sizeof *m->tensor_file)))
        return widen_fail(err, WIDEN_EIO, "out of memory");
    for (size_t f = 0; f < m->file_count; f++) {
        const widen_checkpoint *ck = m->files[f].ckpt;
        const char *prefix = m->root ? m->components[m->files[f].component].prefix : "";
        m->files[f].first_tensor = m->tensor_count;
        for (size_t i = 0; i < ck->count; i++) {
            size_t size = strlen(prefix) + strlen(ck->tensors[i].name) + 1, other;
            char *name = malloc(size);
            if (!name) return widen_fail(err, WIDEN_EIO, "out of memory");
            snprintf(name, size, "%s%s", prefix, ck->tensors[i].name);
            m->names[m->tensor_count] = name;
            m->tensor_file[m->tensor_count] = f;
            int added = widen_table_put(&m->by_name, name, size - 1, m->tensor_count, &other);
            if (added < 0) return widen_fail(err, WIDEN_EIO, "out of memory");
            m->tensor_count++;
            if (!added)
                return widen_fail(err, WIDEN_EUSAGE, "%s: %s and %s both hold tensor '%.300s': one model cannot hold a "
                                  "name twice (the same weights in two files? name the index or file to use)", m->path,
                                  m->files[m->tensor_file[other]].rel, m->files[f].rel, name);
        }
    }
    return WIDEN_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* What configs say                                                                                 */

static size_t path_get(const widen_json *j, const char *a, const char *b)
{
    size_t n = widen_json_get(j, 0, a);
    return b ? widen_json_get(j, n, b) : n;
}

size_t widen_model_declarations(const widen_model *m, size_t component, widen_channel_decl *out, size_t max)
{
    const widen_model_component *c = &m->components[component];
    if (!c->config.rel) return 0;
    const widen_json *j = &c->config.json;
    static const char *const keys[][2] = {{"num_channels", NULL},  {"vision_config", "num_channels"},
                                          {"in_channels", NULL},   {"model_args", "in_chans"},
                                          {"conditioning_channels", NULL}};
    size_t n = 0;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        size_t node = path_get(j, keys[k][0], keys[k][1]);
        if (node == WJ_NONE || j->nodes[node].kind != WJ_NUMBER || n >= max) continue;
        out[n] = (widen_channel_decl){.node = node, .value = j->nodes[node].number};
        snprintf(out[n].path, sizeof out[n].path, "%s%s%s", keys[k][0], keys[k][1] ? "." : "", keys[k][1] ? keys[k][1] : "");
        n++;
    }
    static const char *const sizes[] = {"input_size", "test_input_size"};
    for (int s = 0; s < 2; s++) {
        size_t node = path_get(j, "pretrained_cfg", sizes[s]);
        if (node == WJ_NONE || j->nodes[node].kind != WJ_ARRAY || !j->nodes[node].count || n >= max) continue;
        size_t first = j->nodes[node].first;
        if (j->nodes[first].kind != WJ_NUMBER) continue;
        out[n] = (widen_channel_decl){.node = first, .value = j->nodes[first].number};
        snprintf(out[n].path, sizeof out[n].path, "pretrained_cfg.%s[0]", sizes[s]);
        n++;
    }
    return n;
}

size_t widen_model_first_layers(const widen_model *m, size_t component, char **names, size_t max)
{
    const widen_model_component *c = &m->components[component];
    if (!c->config.rel) return 0;
    const widen_json *j = &c->config.json;
    size_t node = path_get(j, "pretrained_cfg", "first_conv"), n = 0;
    if (node == WJ_NONE) return 0;
    size_t first = j->nodes[node].kind == WJ_ARRAY ? j->nodes[node].first : node;
    for (size_t k = first; k != WJ_NONE && n < max; k = j->nodes[node].kind == WJ_ARRAY ? j->nodes[k].next : WJ_NONE) {
        if (j->nodes[k].kind != WJ_STRING || j->nodes[k].len != strlen(j->nodes[k].str)) continue;
        size_t size = j->nodes[k].len + 8;
        if (!(names[n] = malloc(size))) break;
        snprintf(names[n], size, "%s.weight", j->nodes[k].str);
        n++;
    }
    return n;
}

static void add_note(widen_model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Cuts an incomplete UTF-8 sequence off the end of s (a cut made by a fixed-size buffer). */
static void utf8_trim(char *s)
{
    size_t n = strlen(s), k = 0;
    while (k < n && k < 4 && ((unsigned char)s[n - 1 - k] & 0xc0) == 0x80) k++;
    if (k == n || k >= 4) return;
    unsigned char lead = (unsigned char)s[n - 1 - k];
    size_t want = lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 0;
    if (want && want != k + 1) s[n - 1 - k] = '\0';
}

static void add_note(widen_model *m, const char *fmt, ...)
{
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    utf8_trim(line);
    char **grown = realloc(m->notes, (m->note_count + 1) * sizeof *grown);
    if (!grown) return;
    m->notes = grown;
    if ((m->notes[m->note_count] = strdup(line))) m->note_count++;
}

static void value_text(const widen_json *j, size_t node, char *out, size_t size)
{
    const widen_json_node *v = &j->nodes[node];
    size_t len = v->end - v->start;
    if (len > 120) {
        snprintf(out, size, "%.100s", j->text + v->start);
        utf8_trim(out);
        strncat(out, " ...", size - strlen(out) - 1);
    } else {
        snprintf(out, size, "%.*s", (int)len, j->text + v->start);
    }
    /* one line: the layout's runs of white space become one space */
    char *w = out;
    for (const char *p = out; *p; p++) {
        int space = *p == '\n' || *p == '\r' || *p == '\t' || *p == ' ';
        if (space && (w == out || w[-1] == ' ' || w[-1] == '[' || w[-1] == '{')) continue;
        if ((*p == ']' || *p == '}') && w > out && w[-1] == ' ') w--;
        *w++ = space ? ' ' : *p;
    }
    *w = '\0';
}

static void channel_notes(widen_model *m)
{
    for (size_t c = 0; c < m->component_count; c++) {
        const widen_model_component *k = &m->components[c];
        if (k->config.error) add_note(m, "%sconfig.json: not read: %s", k->prefix, k->config.error);
        if (k->preprocessor.error) add_note(m, "%spreprocessor_config.json: not read: %s", k->prefix, k->preprocessor.error);
        widen_channel_decl decls[8];
        size_t n = widen_model_declarations(m, c, decls, 8);
        char text[160];
        for (size_t i = 0; i < n; i++) {
            value_text(&k->config.json, decls[i].node, text, sizeof text);
            add_note(m, "%sconfig.json: %s = %s", k->prefix, decls[i].path, text);
        }
        size_t first = path_get(&k->config.json, "pretrained_cfg", "first_conv");
        if (k->config.rel && first != WJ_NONE) {
            value_text(&k->config.json, first, text, sizeof text);
            add_note(m, "%sconfig.json: pretrained_cfg.first_conv = %s", k->prefix, text);
        }
        static const char *const lists[][3] = {{"pretrained_cfg", "mean", "config.json"},
                                               {"pretrained_cfg", "std", "config.json"},
                                               {NULL, "image_mean", "preprocessor_config.json"},
                                               {NULL, "image_std", "preprocessor_config.json"}};
        for (int i = 0; i < 4; i++) {
            const widen_model_doc *d = lists[i][0] ? &k->config : &k->preprocessor;
            if (!d->rel) continue;
            size_t node = lists[i][0] ? path_get(&d->json, lists[i][0], lists[i][1]) : widen_json_get(&d->json, 0, lists[i][1]);
            if (node == WJ_NONE) continue;
            value_text(&d->json, node, text, sizeof text);
            add_note(m, "%s%s: %s%s%s = %s", k->prefix, lists[i][2], lists[i][0] ? lists[i][0] : "", lists[i][0] ? "." : "",
                     lists[i][1], text);
        }
    }
}

widen_status widen_model_open(const char *path, widen_model **out, widen_error *err)
{
    if (!out) return widen_fail(err, WIDEN_EUSAGE, "widen_model_open needs somewhere to put the model");
    *out = NULL;
    if (!path) return widen_fail(err, WIDEN_EUSAGE, "widen_model_open needs a path");
    return widen_model_open_with(path, NULL, out, err);
}

/* Progress of a folder's opens, scaled into the folder's total, ended at it where any was reported. */
typedef struct folder_progress {
    widen_meter meter;
    int called;
} folder_progress;

static int folder_opening(void *user, uint64_t done, uint64_t total)
{
    folder_progress *f = user;
    f->called = 1;
    return widen_meter_progress(&f->meter, done, total);
}

widen_status widen_model_open_with(const char *path, const widen_open_options *options, widen_model **out,
                                   widen_error *err)
{
    if (!out) return widen_fail(err, WIDEN_EUSAGE, "widen_model_open_with needs somewhere to put the model");
    *out = NULL;
    if (!path) return widen_fail(err, WIDEN_EUSAGE, "widen_model_open_with needs a path");
    widen_open_options o;
    widen_open_options_init(&o, sizeof o);
    widen_status given = widen_options_read(&o, sizeof o, WIDEN_OPEN_OPTIONS_V1, options, "widen_open_options", err);
    if (given) return given;
    widen_open_work file_work = {.progress = o.progress, .progress_user = o.progress_user}, folder_work = file_work;
    folder_progress folder = {.meter = {.fn = o.progress, .user = o.progress_user}};
    folder_work.progress = o.progress ? folder_opening : NULL;
    folder_work.progress_user = &folder;
    widen_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    struct stat s;
    widen_status st = WIDEN_OK;
    int is_dir = stat(path, &s) == 0 && S_ISDIR(s.st_mode);
    int is_index = !is_dir && ends_with(path, ".index.json") && stat(path, &s) == 0 && S_ISREG(s.st_mode);
    m->opening = is_dir || is_index ? &folder_work : &file_work;
    m->open_meter = (is_dir || is_index) && o.progress ? &folder.meter : NULL;
    if (is_dir) {
        if (!(m->root = strdup(path))) st = widen_fail(err, WIDEN_EIO, "out of memory");
        size_t n = m->root ? strlen(m->root) : 0;
        while (n > 1 && m->root[n - 1] == '/') m->root[--n] = '\0';
        if (!st) st = open_folder(m, NULL, err);
    } else if (is_index) {
        char *copy = strdup(path);
        const char *slash = copy ? strrchr(copy, '/') : NULL;
        if (!copy) st = widen_fail(err, WIDEN_EIO, "out of memory");
        else if (!slash) m->root = strdup(".");
        else if (slash == copy) m->root = strdup("/");
        else m->root = strndup(copy, (size_t)(slash - copy));
        if (!st && !m->root) st = widen_fail(err, WIDEN_EIO, "out of memory");
        if (!st) st = open_folder(m, base_name(path), err);
        free(copy);
    } else {
        st = add_file(m, 0, path, 0, err);
        if (!st) m->size = widen_checkpoint_size(m->files[0].ckpt);
    }
    /* the folder's run ends at its total (the files that are not weights are its rest) */
    if (!st && folder.called && folder.meter.reported < folder.meter.total &&
        o.progress(o.progress_user, folder.meter.total, folder.meter.total))
        st = widen_fail(err, WIDEN_EINTERRUPTED, "%s: interrupted", path);
    m->opening = NULL;
    m->open_meter = NULL;
    if (!st) st = name_tensors(m, err);
    if (!st && m->root) channel_notes(m);
    if (st) {
        widen_model_close(m);
        return st;
    }
    *out = m;
    return WIDEN_OK;
}

void widen_model_close(widen_model *m)
{
    if (!m) return;
    for (size_t f = 0; f < m->file_count; f++) {
        widen_close(m->files[f].ckpt);
        free(m->files[f].rel);
    }
    for (size_t c = 0; c < m->component_count; c++) {
        widen_model_component *k = &m->components[c];
        free(k->rel);
        free(k->prefix);
        widen_model_doc_free(&k->index);
        widen_model_doc_free(&k->config);
        widen_model_doc_free(&k->preprocessor);
    }
    for (size_t i = 0; i < m->other_count; i++) free(m->others[i].rel);
    for (size_t i = 0; i < m->tensor_count; i++) free(m->names[i]);
    for (size_t i = 0; i < m->note_count; i++) free(m->notes[i]);
    widen_table_free(&m->by_name);
    free(m->notes);
    free(m->names);
    free(m->tensor_file);
    free(m->others);
    free(m->components);
    free(m->files);
    free(m->dirs);
    free(m->root);
    free(m->path);
    free(m);
}

/* ---------------------------------------------------------------------------------------------- */
/* Accessors                                                                                        */

int widen_model_is_folder(const widen_model *m) { return m && m->root != NULL; }
size_t widen_model_file_count(const widen_model *m) { return m ? m->file_count : 0; }
widen_checkpoint *widen_model_file(const widen_model *m, size_t i) { return m && i < m->file_count ? m->files[i].ckpt : NULL; }
const char *widen_model_file_name(const widen_model *m, size_t i) { return m && i < m->file_count ? m->files[i].rel : NULL; }
uint64_t widen_model_size(const widen_model *m) { return m ? m->size : 0; }
size_t widen_model_tensor_count(const widen_model *m) { return m ? m->tensor_count : 0; }
const char *widen_model_tensor_name(const widen_model *m, size_t i) { return m && i < m->tensor_count ? m->names[i] : NULL; }
size_t widen_model_left_out_count(const widen_model *m)
{
    size_t n = 0;
    for (size_t i = 0; m && i < m->other_count; i++) n += m->others[i].kind == WIDEN_OTHER_LEFT_OUT;
    return n;
}

const char *widen_model_left_out(const widen_model *m, size_t index)
{
    for (size_t i = 0; m && i < m->other_count; i++)
        if (m->others[i].kind == WIDEN_OTHER_LEFT_OUT && index-- == 0) return m->others[i].rel;
    return NULL;
}

size_t widen_model_channel_note_count(const widen_model *m) { return m ? m->note_count : 0; }
const char *widen_model_channel_note(const widen_model *m, size_t i) { return m && i < m->note_count ? m->notes[i] : NULL; }

size_t widen_model_local_index(const widen_model *m, size_t tensor)
{
    return tensor - m->files[m->tensor_file[tensor]].first_tensor;
}

const widen_tensor_info *widen_model_tensor_at(const widen_model *m, size_t i, size_t *file)
{
    if (!m || i >= m->tensor_count) return NULL;
    if (file) *file = m->tensor_file[i];
    return &m->files[m->tensor_file[i]].ckpt->tensors[widen_model_local_index(m, i)];
}

long widen_model_tensor_find(const widen_model *m, const char *name)
{
    size_t v;
    return m && name && widen_table_get(&m->by_name, name, strlen(name), &v) ? (long)v : -1;
}

static int fits(const widen_tensor_info *t, int axis, uint64_t from)
{
    int a = axis < 0 ? axis + t->rank : axis;
    return widen_dtype_is_float(t->dtype) && t->rank >= 3 && a >= 0 && a < t->rank && t->shape[a] == from;
}

size_t widen_model_find_candidates(const widen_model *m, int axis, uint64_t from, size_t *indices, size_t max)
{
    size_t n = 0;
    if (!m || (!indices && max)) return 0;
    /* 1. what timm configs name as the first layer */
    for (size_t c = 0; m->root && c < m->component_count; c++) {
        char *names[8];
        size_t k = widen_model_first_layers(m, c, names, 8);
        for (size_t i = 0; i < k; i++) {
            size_t size = strlen(m->components[c].prefix) + strlen(names[i]) + 1;
            char *full = malloc(size);
            if (full) {
                snprintf(full, size, "%s%s", m->components[c].prefix, names[i]);
                long t = widen_model_tensor_find(m, full);
                int seen = 0;
                for (size_t k2 = 0; k2 < n && k2 < max; k2++) seen |= indices[k2] == (size_t)t;
                if (t >= 0 && !seen && fits(widen_model_tensor_at(m, (size_t)t, NULL), axis, from)) {
                    if (n < max) indices[n] = (size_t)t;
                    n++;
                }
            }
            free(full);
            free(names[i]);
        }
    }
    if (n) return n;
    /* 2. the shape rule, narrowed by what configs declare */
    int narrowed = 0;
    for (int pass = 0; pass < (m->root ? 2 : 1) && (pass == 0 || n > 1); pass++) {
        size_t found = 0;
        for (size_t i = 0; i < m->tensor_count; i++) {
            if (!fits(widen_model_tensor_at(m, i, NULL), axis, from)) continue;
            if (pass == 1) {
                size_t c = m->files[m->tensor_file[i]].component;
                widen_channel_decl decls[8];
                size_t d = widen_model_declarations(m, c, decls, 8), agree = 0;
                for (size_t k = 0; k < d; k++) agree |= decls[k].value == (double)from;
                if (!agree) continue;
            }
            found++;
        }
        if (pass == 1 && (found == 0 || !m->root)) break;
        narrowed = pass;
        n = found;
    }
    size_t w = 0;
    for (size_t i = 0; i < m->tensor_count; i++) {
        if (!fits(widen_model_tensor_at(m, i, NULL), axis, from)) continue;
        if (narrowed) {
            size_t c = m->files[m->tensor_file[i]].component;
            widen_channel_decl decls[8];
            size_t d = widen_model_declarations(m, c, decls, 8), agree = 0;
            for (size_t k = 0; k < d; k++) agree |= decls[k].value == (double)from;
            if (!agree) continue;
        }
        if (w < max) indices[w] = i;
        w++;
    }
    return w;
}
