/* fuzz_safetensors.c: libFuzzer target for the safetensors header reader. */
#include <stdlib.h>
#include <string.h>

#include "../../src/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = calloc(1, sizeof *c);
    c->path = strdup("fuzz.safetensors");
    c->fd = -1;
    c->map = data;
    c->size = size;
    c->format = "safetensors";
    widen_error err;
    if (widen_safetensors_read(c, &err) == WIDEN_OK) {
        for (size_t i = 0; i < c->count; i++) /* every tensor lies inside the input */
            if (c->tensors[i].offset > size || c->tensors[i].nbytes > size - c->tensors[i].offset) abort();
    }
    c->map = NULL; /* not ours to unmap */
    widen_close(c);
    return 0;
}
