/* fuzz_verify.c: libFuzzer target for verify, on mutated outputs of a fixed input. Each input is a
 * selector byte and an output: 0, a safetensors -> safetensors widening; 1, safetensors -> .pt; 2,
 * .pt -> .pt with a cast. verify may say anything but yes, except for the one output apply writes:
 * verify's "yes" means these exact bytes. With WIDEN_FUZZ_SEEDS set to a folder, the three outputs
 * apply writes are put there first, as seeds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "widen/widen.h"

enum { VARIANTS = 3 };
static char folder[64], inputs[VARIANTS][128], outputs[VARIANTS][128], manifests[VARIANTS][128];
static unsigned char *canonical[VARIANTS];
static size_t canonical_len[VARIANTS];

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f)) abort();
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*len + 1);
    if (fread(data, 1, *len, f) != *len) abort();
    fclose(f);
    return data;
}

/* conv.weight F32 [4, 3, 2, 2] and bias F16 [4], with metadata, as the reference writer lays them out */
static void write_input(const char *path)
{
    const char json[] = "{\"__metadata__\":{\"format\":\"pt\"},\"conv.weight\":{\"dtype\":\"F32\",\"shape\":[4,3,2,2],"
                        "\"data_offsets\":[0,192]},\"bias\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[192,200]}}";
    size_t n = sizeof json - 1, padded = (n + 7) / 8 * 8;
    unsigned char file[8 + 512 + 200];
    for (int b = 0; b < 8; b++) file[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    memcpy(file + 8, json, n);
    memset(file + 8 + n, ' ', padded - n);
    for (int i = 0; i < 200; i++) file[8 + padded + i] = (unsigned char)(i * 37 + 11);
    write_file(path, file, 8 + padded + 200);
}

static void remove_folder(void)
{
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", folder);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", folder);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    strcpy(folder, "/tmp/widen-fuzz-verify-XXXXXX");
    if (!mkdtemp(folder)) abort();
    atexit(remove_folder);
    widen_error err;
    snprintf(inputs[0], sizeof inputs[0], "%s/in.safetensors", folder);
    write_input(inputs[0]);
    strcpy(inputs[1], inputs[0]);
    snprintf(inputs[2], sizeof inputs[2], "%s/in.pt", folder);
    widen_transform *none = widen_transform_new(), *widening = widen_transform_new(), *cast = widen_transform_new();
    widen_map_entry map[4] = {{.kind = WIDEN_MAP_SOURCE, .channel = 0}, {.kind = WIDEN_MAP_SOURCE, .channel = 1},
                              {.kind = WIDEN_MAP_SOURCE, .channel = 2}, {.kind = WIDEN_MAP_MEAN}};
    if (widen_transform_add_map(widening, "conv.weight", 1, map, 4, &err) ||
        widen_transform_set_cast(cast, WIDEN_BF16, &err) || widen_apply(inputs[0], inputs[2], none, NULL, &err))
        abort();
    const widen_transform *transforms[VARIANTS] = {widening, widening, cast};
    const char *ext[VARIANTS] = {"safetensors", "pt", "pt"};
    const char *seeds = getenv("WIDEN_FUZZ_SEEDS");
    for (int k = 0; k < VARIANTS; k++) {
        char written[160];
        snprintf(written, sizeof written, "%s/apply%d.%s", folder, k, ext[k]);
        snprintf(outputs[k], sizeof outputs[k], "%s/out%d.%s", folder, k, ext[k]);
        snprintf(manifests[k], sizeof manifests[k], "%s/m%d.json", folder, k);
        widen_apply_options o;
        widen_apply_options_init(&o, sizeof o);
        o.fsync = 0;
        o.manifest_path = manifests[k];
        o.threads = 1;
        if (widen_apply(inputs[k], written, transforms[k], &o, &err)) abort();
        canonical[k] = read_file(written, &canonical_len[k]);
        if (seeds) {
            char path[4096];
            snprintf(path, sizeof path, "%s/variant%d", seeds, k);
            unsigned char *seed = malloc(canonical_len[k] + 1);
            seed[0] = (unsigned char)k;
            memcpy(seed + 1, canonical[k], canonical_len[k]);
            write_file(path, seed, canonical_len[k] + 1);
            free(seed);
        }
    }
    widen_transform_free(none);
    widen_transform_free(widening);
    widen_transform_free(cast);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int k = data[0] % VARIANTS;
    write_file(outputs[k], data + 1, size - 1);
    widen_verify_report report;
    widen_verify_report_init(&report, sizeof report);
    widen_verify_options options;
    widen_verify_options_init(&options, sizeof options);
    options.manifest_path = manifests[k];
    options.threads = 1;
    widen_error err;
    widen_status st = widen_verify(inputs[k], outputs[k], &options, &report, &err);
    if (st == WIDEN_OK && (size - 1 != canonical_len[k] || memcmp(data + 1, canonical[k], size - 1) != 0)) abort();
    if (st != WIDEN_OK && st != WIDEN_DIFFERENT && st != WIDEN_EFORMAT) abort(); /* nothing else can happen here */
    return 0;
}
