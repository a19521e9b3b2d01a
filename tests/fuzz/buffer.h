/* buffer.h: a checkpoint over a fuzzer's input buffer (not a mapping of a file: widen_release and
 * widen_close leave it alone). */
#ifndef WIDEN_FUZZ_BUFFER_H
#define WIDEN_FUZZ_BUFFER_H

#include <stdlib.h>
#include <string.h>

#include "../../src/internal.h"

static widen_checkpoint *buffer_checkpoint(const uint8_t *data, size_t size, const char *path, const char *format)
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
static void check_tensors_inside(const widen_checkpoint *c, size_t size)
{
    for (size_t i = 0; i < c->count; i++)
        if (c->tensors[i].offset > size || c->tensors[i].nbytes > size - c->tensors[i].offset) abort();
}

static void buffer_close(widen_checkpoint *c)
{
    c->map = NULL; /* not ours to unmap */
    widen_close(c);
}

#endif
