/* fuzz_map.c: libFuzzer target for the --map and --init argument parsers and the map builder. */
#include <stdlib.h>
#include <string.h>

#include "widen/widen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    widen_error err;
    widen_map_entry *entries = NULL;
    size_t count = 0;
    if (widen_parse_map(text, &entries, &count, &err) == WIDEN_OK) {
        if (count == 0) abort();
        widen_transform *t = widen_transform_new();
        if (widen_transform_add_map(t, "x", 1, entries, count, &err) == WIDEN_OK) {
            char *json = widen_transform_to_json(t); /* the recorded form reads back */
            widen_transform *back = NULL;
            if (!json || widen_transform_from_json(json, &back, &err) != WIDEN_OK) abort();
            widen_transform_free(back);
            free(json);
        }
        widen_transform_free(t);
        free(entries);
    }
    widen_init init;
    if (widen_parse_init(text, &init, &err) == WIDEN_OK) {
        widen_map_entry built[8];
        widen_widen_map(3, 8, (uint32_t)(size % 7), &init, built, &err);
    }
    free(text);
    return 0;
}
