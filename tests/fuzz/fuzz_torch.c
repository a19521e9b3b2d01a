/* fuzz_torch.c: libFuzzer target for PyTorch checkpoints: the zip directory and local headers, the
 * restricted pickle VM, the tensor walk; then the pickle writer on whatever was read. */
#include <stdlib.h>
#include <string.h>

#include "../../src/format/torch.h"
#include "../../src/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = calloc(1, sizeof *c);
    c->path = strdup("fuzz.pt");
    c->fd = -1;
    c->map = data;
    c->size = size;
    c->format = "pt";
    widen_error err;
    if (widen_torch_read(c, &err) == WIDEN_OK) {
        torch_state *ts = c->format_state;
        for (size_t i = 0; i < c->count; i++)
            if (c->tensors[i].offset > size || c->tensors[i].nbytes > size - c->tensors[i].offset) abort();
        pk_buffer out = {0};
        if (pk_dump(ts->arena, ts->root, &out, &err) != WIDEN_OK) abort();
        free(out.data);
    }
    c->map = NULL;
    widen_close(c);
    return 0;
}
