/* apply.h: what the model layer above uses of apply and verify: one file's apply with its manifest
 * entries and byte counts, one file's verify with a transform given, and temporary files and
 * folders that are removed on failure and on a signal. */
#ifndef WIDEN_APPLY_H
#define WIDEN_APPLY_H

#include <jansson.h>

#include "internal.h"
#include "text.h"

/* What one file's apply tells the caller: its manifest entries (appended to `tensors` when set,
 * each with a "file" member and its name prefixed) and the sizes of the tensors it wrote. */
typedef struct widen_apply_record {
    widen_text *tensors;
    const char *file, *prefix;
    size_t *entries;                 /* entries appended so far, across files */
    uint64_t in_bytes, out_bytes;    /* element bytes of every named tensor, before and after */
    uint64_t in_elements, out_elements;
} widen_apply_record;

/* Adds the plan's tensor sizes, before and after, to the record (what apply counts as it writes,
 * and verify as it replays). */
void widen_apply_record_sizes(widen_apply_record *record, const widen_plan *plan);

/* Zeroes the caller's stats (NULL: none), within its size: what each public apply does first. */
void widen_apply_stats_reset(widen_apply_stats *stats);
/* Adds an output's byte counts to the caller's stats (NULL: none), within its size. */
void widen_apply_stats_add(widen_apply_stats *stats, const widen_copy_counts *counts);

/* The caller's options (NULL: the defaults) read into `out` as widen.h's growth rules say. */
widen_status widen_apply_options_read(const widen_apply_options *given, widen_apply_options *out, widen_error *err);

/* WIDEN_EIO, as creating a temporary `what` ("a file", "a folder") would give, when the folder of `target` does not exist or
 * does not take files (a dry run's check). */
widen_status widen_writable_folder(const char *target, const char *what, widen_error *err);

widen_status widen_apply_file(widen_checkpoint *ckpt, const char *output, const widen_transform *transform,
                              const widen_apply_options *options, widen_apply_record *record, widen_error *err);

/* The manifest's per-tensor entry, as apply writes it. */
void widen_manifest_tensor(widen_text *t, const widen_plan_tensor *p, const char *prefix, const char *file);
json_t *widen_manifest_load(const char *path, widen_error *err);

/* How a verify runs: threads for the replay, and its progress (fn NULL: none). */
typedef struct widen_verify_work {
    unsigned threads;
    widen_progress_fn progress;
    void *progress_user;
} widen_verify_work;

/* Verifies one output file against its input with `transform`, whose JSON a safetensors output must
 * record as `provenance`; `manifest` (an object with "tensors", or NULL) is checked too. Adds to the
 * report (differences counted from what it held), and the plan's sizes to `record` (or NULL).
 * Progress goes from 0 to its own total (the bytes replayed, then read back). */
widen_status widen_verify_run(const char *input, const char *output, const widen_transform *transform,
                              const char *provenance, json_t *manifest, const char *manifest_name,
                              const widen_verify_work *work, widen_apply_record *record,
                              widen_verify_report *report, widen_error *err);

/* The public verify functions' checks of their arguments: options read into `options` (the
 * defaults for NULL), a report whose size this library can fill. */
widen_status widen_verify_begin(const char *what, const char *input, const char *output,
                                const widen_verify_options *given, widen_verify_report *report,
                                widen_verify_options *options, widen_error *err);
/* Copies the full report into the caller's, as far as its size goes. */
void widen_verify_end(const widen_verify_report *full, widen_verify_report *report);
/* widen_verify with its options read and a full report. */
widen_status widen_verify_file(const char *input, const char *output, const widen_verify_options *options,
                               widen_verify_report *report, widen_error *err);

/* Counts a difference in the report, and keeps the first one's message (escaped). */
void widen_verify_difference(widen_verify_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A temporary file beside `target`, renamed into place by commit, removed by discard (and by
 * widen_remove_temporaries). */
typedef struct widen_temp_file {
    char *path;   /* NULL once renamed into place or removed */
    char *target; /* once renamed into place, until released */
    int fd;
    int slot;
} widen_temp_file;

widen_status widen_temp_open(const char *target, widen_temp_file *tf, widen_error *err);
/* Renames into place; the file stays registered (a signal removes it) until released. */
widen_status widen_temp_commit(widen_temp_file *tf, const char *target, int do_fsync, int overwrite, widen_error *err);
/* The apply is done: the file is the caller's. */
void widen_temp_release(widen_temp_file *tf);
/* The apply failed: removes the file, renamed into place or not. */
void widen_temp_discard(widen_temp_file *tf);

/* A temporary folder beside `target` whose every entry is recorded as it is made, so that
 * widen_remove_temporaries can remove it all. Entries are paths inside it; room for `capacity`. */
typedef struct widen_temp_folder {
    char *path;   /* NULL once renamed into place */
    char *target; /* once renamed into place, until released */
    int slot;
} widen_temp_folder;

widen_status widen_temp_folder_open(const char *target, size_t capacity, widen_temp_folder *tf, widen_error *err);
/* Records an entry (a file or folder path inside it) before it is created; WIDEN_EIO past the
 * capacity. */
widen_status widen_temp_folder_note(widen_temp_folder *tf, const char *path, widen_error *err);
/* Renames the folder into place (never over an existing one), after fsyncing its folders; it stays
 * registered (a signal removes what was recorded) until released. */
widen_status widen_temp_folder_commit(widen_temp_folder *tf, const char *target, int do_fsync, widen_error *err);
void widen_temp_folder_release(widen_temp_folder *tf);
/* Removes the temporary folder; once renamed into place (and not released), what was recorded in it. */
void widen_temp_folder_discard(widen_temp_folder *tf);

#endif
