/* fuzz_legacy.c: libFuzzer target for legacy torch.save files: the five pickles in a row, the key
 * list and the storages laid out after it (counts, views), the graph walk, the element-by-element
 * hash of every strided tensor (ASan checks that it stays inside the input), and the zip .pt writer
 * on whatever was read, read back. */
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = buffer_checkpoint(data, size, "fuzz.pth", "pt");
    widen_error err;
    if (widen_torch_legacy_read(c, &err) == WIDEN_OK) {
        check_tensors_inside(c, size);
        for (size_t i = 0; i < c->count; i++) {
            widen_hash128 h;
            if (widen_tensor_strided(c, i)) widen_tensor_hash_strided(c, i, &h, &err);
        }
        round_trip(c);
    }
    buffer_close(c);
    return 0;
}
