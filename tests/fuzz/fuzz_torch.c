/* fuzz_torch.c: libFuzzer target for PyTorch checkpoints: the zip directory and local headers, the
 * restricted pickle VM, the tensor walk; then the pickle writer on whatever was read. */
#include "../../src/format/torch.h"
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = buffer_checkpoint(data, size, "fuzz.pt", "pt");
    widen_error err;
    if (widen_torch_read(c, &err) == WIDEN_OK) {
        torch_state *ts = c->format_state;
        check_tensors_inside(c, size);
        pk_buffer out = {0};
        if (pk_dump(ts->arena, ts->root, &out, &err) != WIDEN_OK) abort();
        free(out.data);
    }
    buffer_close(c);
    return 0;
}
