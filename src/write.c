/* write.c: the safetensors writer: the header, then the data section streamed through the executor. */
#include <stdlib.h>

#include "write.h"

/* The safetensors data section: untouched bytes go from the input's page cache to the output's
 * inside the kernel where the output allows it, as cp does; the rest is written. */
typedef struct write_sink {
    widen_output *out;
    int in_fd;
} write_sink;

static widen_status sink_copy(void *user, size_t index, uint64_t offset, uint64_t in_offset, size_t len, widen_error *err)
{
    (void)index;
    (void)offset;
    write_sink *w = user;
    return w->out->copy ? w->out->copy(w->out, w->in_fd, in_offset, len, err) : WIDEN_EUSAGE;
}

static widen_status sink_write(void *user, size_t index, uint64_t offset, const void *data, size_t len,
                               widen_error *err)
{
    (void)index;
    (void)offset;
    write_sink *w = user;
    return w->out->write(w->out, data, len, err);
}

widen_status widen_safetensors_write(const widen_checkpoint *ckpt, widen_plan *plan, const char *provenance,
                                     widen_output *out, const widen_exec_options *options, widen_error *err)
{
    unsigned char *header = NULL;
    size_t header_len = 0;
    widen_status st = widen_safetensors_header(plan, ckpt, provenance, &header, &header_len, err);
    if (!st) st = out->write(out, header, header_len, err);
    free(header);
    if (st) return st;
    write_sink ws = {.out = out, .in_fd = widen_checkpoint_fd(ckpt)};
    widen_exec_options eo = *options;
    eo.copy = out->copy ? sink_copy : NULL; /* no copy at all (a pipe, a comparison): no run hashed twice */
    return widen_execute(ckpt, plan, &eo, sink_write, &ws, err);
}

