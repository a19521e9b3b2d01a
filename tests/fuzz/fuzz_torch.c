/* fuzz_torch.c: libFuzzer target for PyTorch checkpoints: the zip directory and local headers, the
 * restricted pickle VM, the tensor walk; then the pickle writer on whatever was read, and the
 * element-by-element hash of every strided tensor (ASan checks that it stays inside the input). */
#include "../../src/format/torch.h"
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = buffer_checkpoint(data, size, "fuzz.pt", "pt");
    widen_error err;
    if (widen_torch_read(c, &err) == WIDEN_OK) {
        torch_state *ts = c->format_state;
        check_tensors_inside(c, size);
        for (size_t i = 0; i < c->count; i++) {
            widen_hash128 h;
            if (widen_tensor_strided(c, i)) widen_tensor_hash_strided(c, i, &h, &err);
        }
        pk_buffer out = {0};
        if (pk_dump(ts->arena, ts->root, NULL, NULL, &out, &err) != WIDEN_OK) abort();
        free(out.data);
    }
    buffer_close(c);
    return 0;
}
