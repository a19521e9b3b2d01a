/* fuzz_legacy.c: libFuzzer target for legacy torch.save files: the five pickles in a row, the key
 * list and the storages laid out after it (counts, views), the graph walk, the element-by-element
 * hash of every strided tensor (ASan checks that it stays inside the input), and the zip .pt writer
 * on whatever was read, read back. */
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = buffer_checkpoint(data, size, "fuzz.pth", "pt");
    widen_error err;
    if (widen_torch_legacy_read(c, &err) == WIDEN_OK) check_torch(c, size);
    buffer_close(c);
    return 0;
}
