/* fuzz_npy.c: libFuzzer target for the .npy header parser and reader: whatever it accepts describes
 * data inside the input, exactly to its end. */
#include "../../src/format/npy.h"
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    widen_checkpoint *c = buffer_checkpoint(data, size, "fuzz.npy", "npy");
    widen_error err;
    if (widen_npy_read(c, &err) == WIDEN_OK) {
        check_tensors_inside(c, size);
        if (c->count != 1 || c->tensors[0].offset + c->tensors[0].nbytes != size) abort();
    }
    buffer_close(c);
    return 0;
}
