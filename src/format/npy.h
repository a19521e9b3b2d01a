/* npy.h: NumPy .npy files: the header, and a checkpoint of the one array a file holds. */
#ifndef WIDEN_NPY_H
#define WIDEN_NPY_H

#include "../internal.h"
#include "zip.h"

/* The name a .npy file's array gets (NumPy's files hold one array and no name). */
#define WIDEN_NPY_NAME "array"

typedef struct widen_npy_header {
    widen_dtype dtype;
    int big_endian;     /* '>' on a type of more than one byte */
    int fortran_order;  /* as the header says */
    int column_major;   /* Fortran order where it differs from C order (more than one dimension past 1) */
    int rank;
    uint64_t shape[WIDEN_MAX_RANK];
    uint64_t data_offset, nbytes;
} widen_npy_header;

/* Parses a .npy header as numpy.lib.format reads one, the literals np.save writes; WIDEN_EFORMAT
 * for anything else (an object or structured dtype, a key missing or repeated, Python beyond
 * literals, more than NumPy's 10,000-byte limit). */
widen_status widen_npy_parse_header(const unsigned char *data, uint64_t size, const char *path, widen_npy_header *out,
                                    widen_error *err);

/* Fills the checkpoint's one tensor from the mapped file. */
widen_status widen_npy_read(widen_checkpoint *c, widen_error *err);

/* An .npz archive of .npy members: a tensor each, named as the member less ".npy"
 * ("params/conv1/kernel"). Stored members are read in place. Deflated ones (np.savez_compressed) are
 * inflated at open into an unlinked temporary file in $TMPDIR (or /tmp), which then stands for the
 * checkpoint's data (ckpt->map, fd and size; ckpt->file is the archive): their inflated size, as
 * the zip directory declares it, must equal header plus data and may be at most `max_inflated` in
 * all (checked before anything is inflated), and each stream must end exactly at its compressed
 * size, with the CRC-32 the directory gives. Other zip methods are refused. widen_npz_read bounds
 * the inflated bytes by the work bound (WIDEN_WORK_FACTOR times the file's size, plus the slack). */
/* Opening reads every stored member whole too, for its CRC-32 (as np.load's zipfile checks it).
 * That reading and the inflating are the open's work (ckpt->open_work: the stored members' sizes,
 * the deflated ones' inflated sizes, and in an archive with deflated arrays the stored arrays' bytes
 * again, copied beside them), reported to work->progress (work may be NULL: none) every
 * WIDEN_OPEN_STEP bytes and at its end; with work->defer it waits for widen_npz_load. */
widen_status widen_npz_read_bounded(widen_checkpoint *c, uint64_t max_inflated, const widen_open_work *work,
                                    widen_error *err);
widen_status widen_npz_read(widen_checkpoint *c, const widen_open_work *work, widen_error *err);
/* The work a deferred read left (none: WIDEN_OK at once). */
widen_status widen_npz_load(widen_checkpoint *c, widen_progress_fn progress, void *progress_user, widen_error *err);

#endif
