/* buffer.h: what the fuzz targets share: a checkpoint over a fuzzer's input buffer (not a mapping of
 * a file: widen_release and widen_close leave it alone), an output into memory, and the round trip
 * every torch target ends with (what was read is written as a .pt again, and that reads back with the
 * same names). */
#ifndef WIDEN_FUZZ_BUFFER_H
#define WIDEN_FUZZ_BUFFER_H

#include <stdlib.h>
#include <string.h>

#include "../../src/format/torch.h"
#include "../../src/internal.h"
#include "../../src/write.h"

static inline widen_checkpoint *buffer_checkpoint(const uint8_t *data, size_t size, const char *path, const char *format)
{
    widen_checkpoint *c = calloc(1, sizeof *c);
    c->path = strdup(path);
    c->fd = -1;
    c->map = data;
    c->size = size;
    c->format = format;
    return c;
}

/* Every tensor a reader accepted lies inside the input. */
static inline void check_tensors_inside(const widen_checkpoint *c, size_t size)
{
    for (size_t i = 0; i < c->count; i++)
        if (c->tensors[i].offset > size || c->tensors[i].nbytes > size - c->tensors[i].offset) abort();
}

static inline void buffer_close(widen_checkpoint *c)
{
    if (c->inflated) c->file.data = NULL; /* not ours to unmap (the inflated arrays' file is) */
    else c->map = NULL;
    widen_close(c);
}

typedef struct memory_output {
    widen_output base;
    unsigned char *data;
    size_t len, cap;
} memory_output;

static inline widen_status memory_write(widen_output *o, const void *data, size_t len, widen_error *err)
{
    (void)err;
    memory_output *m = (memory_output *)o;
    if (m->len + len > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->len + len) cap *= 2;
        m->data = realloc(m->data, cap);
        if (!m->data) abort();
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, len);
    m->len += len;
    o->position += len;
    return WIDEN_OK;
}

/* Writes c again as a .pt (cast to F16 where it can be), reads that back, and aborts unless it reads
 * with the same names in the same order: whatever the reader accepts, the writer writes readably. */
static inline void round_trip(widen_checkpoint *c)
{
    widen_error err;
    widen_transform *tr = widen_transform_new();
    widen_transform_set_cast(tr, WIDEN_F16, &err);
    widen_plan plan;
    if (widen_plan_build(c, tr, &plan, &err) != WIDEN_OK) { /* refusals only for the work a file describes */
        if (err.status != WIDEN_EFORMAT) abort();
        widen_transform_free(tr);
        return;
    }
    memory_output out = {.base = {.write = memory_write}};
    widen_exec_options eo = {.threads = 1, .isa = WIDEN_ISA_COUNT};
    widen_status st = widen_torch_write(c, tr, &plan, &out.base, &eo, NULL, &err);
    if (st == WIDEN_OK) {
        widen_checkpoint *back = buffer_checkpoint(out.data, out.len, "fuzz-again.pt", "pt");
        if (widen_torch_read(back, &err) != WIDEN_OK) abort();
        if (back->count != c->count) abort();
        for (size_t i = 0; i < c->count; i++)
            if (strcmp(back->tensors[i].name, c->tensors[i].name) != 0) abort();
        buffer_close(back);
    } else if (st != WIDEN_EFORMAT) { /* a strided tensor over the 256x bound: refused, never a crash */
        abort();
    }
    free(out.data);
    widen_plan_free(&plan);
    widen_transform_free(tr);
}

/* What every torch target checks of a checkpoint its reader accepted: tensors inside the input, each
 * strided one hashed element by element (ASan checks that it stays inside), and the round trip. */
static inline void check_torch(widen_checkpoint *c, size_t size)
{
    widen_error err;
    check_tensors_inside(c, size);
    for (size_t i = 0; i < c->count; i++) {
        widen_hash128 h;
        if (widen_tensor_strided(c, i)) widen_tensor_hash_strided(c, i, &h, NULL, NULL, &err);
    }
    round_trip(c);
}

#endif
