/* fuzz_torch.c: libFuzzer target for PyTorch checkpoints: the zip directory and local headers, the
 * restricted pickle VM, the graph walk, the element-by-element hash of every strided tensor (ASan
 * checks that it stays inside the input), and the writer on whatever was read, read back. The CRCs
 * of the input are cleared first (readers take a zero CRC for none), so that mutated pickles reach
 * the VM instead of stopping at data.pkl's CRC check. */
#include "buffer.h"

/* Zeroes every CRC field of the central directory entries found by their signature. */
static void clear_crcs(uint8_t *p, size_t size)
{
    for (size_t i = 0; i + 46 <= size; i++)
        if (p[i] == 'P' && p[i + 1] == 'K' && p[i + 2] == 1 && p[i + 3] == 2) memset(p + i + 16, 0, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size + 1);
    memcpy(copy, data, size);
    clear_crcs(copy, size);
    widen_checkpoint *c = buffer_checkpoint(copy, size, "fuzz.pt", "pt");
    widen_error err;
    if (widen_torch_read(c, &err) == WIDEN_OK) check_torch(c, size);
    buffer_close(c);
    free(copy);
    return 0;
}
