/* fuzz_npy.c: libFuzzer target for NumPy files: the .npy header parser and reader, and the .npz
 * member walk (an input that begins as a zip), deflated members included: inflated, with a small
 * bound on what they may declare, into the reader's temporary file. Whatever is accepted describes
 * data inside what the checkpoint reads: a .npy's data runs exactly to its end, an .npz's lies in the
 * input or, inflated, in the temporary file, every byte of which can be read. */
#include "../../src/format/npy.h"
#include "buffer.h"

/* Inflated bytes an input may declare: enough for the seeds, little enough to keep runs fast. */
#define FUZZ_MAX_INFLATED (1u << 20)

/* The open's progress: never backwards, never past its total, which does not change. */
static uint64_t progress_done, progress_total;

static int check_progress(void *user, uint64_t done, uint64_t total)
{
    (void)user;
    if (done < progress_done || done > total || (progress_total && total != progress_total)) abort();
    progress_done = done;
    progress_total = total;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int zip = size >= 4 && memcmp(data, "PK\x03\x04", 4) == 0;
    widen_checkpoint *c = buffer_checkpoint(data, size, zip ? "fuzz.npz" : "fuzz.npy", zip ? "npz" : "npy");
    widen_error err;
    /* an odd-sized input's data pass is deferred, then done (as verify does) */
    widen_open_work work = {.progress = check_progress, .defer = (int)(size & 1)};
    progress_done = progress_total = 0;
    widen_status st = zip ? widen_npz_read_bounded(c, FUZZ_MAX_INFLATED, &work, &err) : widen_npy_read(c, &err);
    if (!st && zip && work.defer) {
        if (c->pending_work != c->open_work) abort();
        st = widen_npz_load(c, check_progress, NULL, &err);
    }
    if (!st && (c->open_work ? progress_done != c->open_work || progress_total != c->open_work : progress_total != 0))
        abort(); /* the progress ends at the open's work, and none where there is none */
    if (st == WIDEN_OK) {
        check_tensors_inside(c, c->size);
        for (size_t i = 0; i < c->count; i++) { /* Fortran order and big-endian: gathered, swapped */
            widen_hash128 h;
            if (widen_tensor_strided(c, i)) widen_tensor_hash_strided(c, i, &h, NULL, NULL, &err);
        }
        if (c->inflated) {
            if (c->file.data != data || c->file.size != size || c->size > FUZZ_MAX_INFLATED) abort();
            unsigned char sum = 0;
            for (size_t i = 0; i < c->count; i++)
                for (uint64_t b = 0; b < c->tensors[i].nbytes; b++) sum ^= c->map[c->tensors[i].offset + b];
            if (sum == 0 && c->count == SIZE_MAX) abort(); /* the reads kept */
        } else if (c->size != size) {
            abort();
        }
        if (!zip && (c->count != 1 || c->tensors[0].offset + c->tensors[0].nbytes != size)) abort();
    } else if (c->inflated) { /* a refusal leaves no temporary file behind */
        abort();
    }
    buffer_close(c);
    return 0;
}
