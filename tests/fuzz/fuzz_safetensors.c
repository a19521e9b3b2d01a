/* fuzz_safetensors.c: libFuzzer target for the safetensors header reader. */
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = buffer_checkpoint(data, size, "fuzz.safetensors", "safetensors");
    widen_error err;
    if (widen_safetensors_read(c, &err) == WIDEN_OK) check_tensors_inside(c, size);
    buffer_close(c);
    return 0;
}
