/* fuzz_npy.c: libFuzzer target for NumPy files: the .npy header parser and reader, and the .npz
 * member walk (an input that begins as a zip). Whatever is accepted describes data inside the input:
 * a .npy's data runs exactly to its end; a gathered array (Fortran order, big-endian) reads only
 * inside it. */
#include "../../src/format/npy.h"
#include "buffer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int zip = size >= 4 && memcmp(data, "PK\x03\x04", 4) == 0;
    widen_checkpoint *c = buffer_checkpoint(data, size, zip ? "fuzz.npz" : "fuzz.npy", zip ? "npz" : "npy");
    widen_error err;
    if ((zip ? widen_npz_read(c, &err) : widen_npy_read(c, &err)) == WIDEN_OK) {
        check_tensors_inside(c, size);
        for (size_t i = 0; i < c->count; i++) { /* Fortran order and big-endian: gathered, swapped */
            widen_hash128 h;
            if (widen_tensor_strided(c, i)) widen_tensor_hash_strided(c, i, &h, &err);
        }
        if (!zip && (c->count != 1 || c->tensors[0].offset + c->tensors[0].nbytes != size)) abort();
    }
    buffer_close(c);
    return 0;
}
