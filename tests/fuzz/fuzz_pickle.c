/* fuzz_pickle.c: libFuzzer target for the restricted pickle VM alone, with a round trip: what it
 * loads, the writer writes, and the VM loads that again. */
#include <stdlib.h>

#include "../../src/format/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pk_arena *arena = NULL;
    pk_node *root = NULL;
    widen_error err;
    if (pk_load(data, size, "fuzz", &arena, &root, &err) == WIDEN_OK &&
        pk_check_graph(arena, root, 1000, "fuzz", &err) == WIDEN_OK) {
        pk_buffer out = {0};
        if (pk_dump(arena, root, NULL, NULL, &out, &err) != WIDEN_OK) abort();
        pk_arena *again = NULL;
        pk_node *root2 = NULL;
        if (pk_load(out.data, out.len, "fuzz-again", &again, &root2, &err) != WIDEN_OK) abort();
        pk_arena_free(again);
        free(out.data);
    }
    pk_arena_free(arena);
    return 0;
}
