/* fuzz_folder.c: libFuzzer target for the documents of a model folder: the input is a shard index,
 * a config.json and a preprocessor_config.json (separated by NUL bytes) beside two fixed shards.
 * Whatever opens is widened (its input layer, when it has one) into a new folder, and that output
 * must verify: the index reader, the config rules and the JSON editor must agree with themselves on
 * any document. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "widen/widen.h"

static char folder[256], output[300];

static void put(const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", folder, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (len && fwrite(data, 1, len, f) != len) abort();
    fclose(f);
}

/* A safetensors file of F32 tensors named and shaped as given (values: their index). */
static void shard(const char *name, const char *header_json, size_t floats)
{
    size_t n = strlen(header_json), pad = (8 - n % 8) % 8;
    unsigned char *buf = calloc(1, 8 + n + pad + floats * 4);
    uint64_t len = n + pad;
    memcpy(buf, &len, 8);
    memcpy(buf + 8, header_json, n);
    memset(buf + 8 + n, ' ', pad);
    for (size_t i = 0; i < floats; i++) {
        float v = (float)i * 0.25f;
        memcpy(buf + 8 + len + 4 * i, &v, 4);
    }
    put(name, buf, 8 + len + floats * 4);
    free(buf);
}

static int remove_entry(const char *path, const struct stat *s, int flag, struct FTW *ftw)
{
    (void)s, (void)flag, (void)ftw;
    return remove(path);
}

static void cleanup(void)
{
    nftw(output, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    nftw(folder, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    atexit(cleanup);
    snprintf(folder, sizeof folder, "/tmp/widen-fuzz-folder-%d", (int)getpid());
    nftw(folder, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (mkdir(folder, 0700) != 0) abort();
    shard("model-00001-of-00002.safetensors",
          "{\"stem.weight\":{\"dtype\":\"F32\",\"shape\":[4,3,2,2],\"data_offsets\":[0,192]},"
          "\"stem.bias\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[192,208]}}", 52);
    shard("model-00002-of-00002.safetensors",
          "{\"head.weight\":{\"dtype\":\"F32\",\"shape\":[2,4,1,1],\"data_offsets\":[0,32]}}", 8);
    snprintf(output, sizeof output, "%s-out", folder);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *parts[3] = {data, NULL, NULL};
    size_t lens[3] = {size, 0, 0};
    for (int k = 1; k < 3; k++) {
        const uint8_t *nul = memchr(parts[k - 1], 0, lens[k - 1]);
        if (!nul) break;
        parts[k] = nul + 1;
        lens[k] = lens[k - 1] - (size_t)(nul + 1 - parts[k - 1]);
        lens[k - 1] = (size_t)(nul - parts[k - 1]);
    }
    static const char *const names[3] = {"model.safetensors.index.json", "config.json", "preprocessor_config.json"};
    for (int k = 0; k < 3; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", folder, names[k]);
        unlink(path);
        if (parts[k]) put(names[k], parts[k], lens[k]);
    }
    nftw(output, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    widen_error err;
    widen_model *m;
    if (widen_model_open(folder, &m, &err) != WIDEN_OK) return 0;
    size_t found[4];
    size_t n = widen_model_find_candidates(m, 1, 3, found, 4);
    widen_transform *tr = widen_transform_new();
    widen_map_entry map[5];
    widen_init init = {.kind = WIDEN_INIT_FILL, .fill = {.kind = WIDEN_MAP_ZERO}};
    const char *name = n ? widen_model_tensor_name(m, found[0]) : "stem.weight";
    int reorder = size % 2;
    if (widen_model_tensor_find(m, name) >= 0 &&
        (reorder ? (map[0] = (widen_map_entry){.kind = WIDEN_MAP_SOURCE, .channel = 2},
                    map[1] = (widen_map_entry){.kind = WIDEN_MAP_SOURCE, .channel = 1},
                    map[2] = (widen_map_entry){.kind = WIDEN_MAP_SOURCE, .channel = 0}, WIDEN_OK)
                 : widen_widen_map(3, 5, 1, &init, map, &err)) == WIDEN_OK &&
        widen_transform_add_map(tr, name, 1, map, reorder ? 3 : 5, &err) == WIDEN_OK) {
        widen_apply_options o;
        widen_apply_options_init(&o, sizeof o);
        o.fsync = 0;
        o.threads = 1;
        if (widen_model_apply(m, output, tr, &o, &err) == WIDEN_OK) {
            widen_verify_report r;
            widen_verify_report_init(&r, sizeof r);
            widen_verify_options vo;
            widen_verify_options_init(&vo, sizeof vo);
            vo.threads = 1;
            widen_status st = widen_model_verify(folder, output, &vo, &r, &err);
            if (st != WIDEN_OK) {
                fprintf(stderr, "verify of an apply output: %d %s %s\n", st, r.first, st == WIDEN_DIFFERENT ? "" : err.message);
                abort();
            }
        }
    }
    widen_transform_free(tr);
    widen_model_close(m);
    return 0;
}
