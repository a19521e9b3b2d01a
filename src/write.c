/* write.c: the safetensors writer: the header, then the data section streamed through the executor,
 * or written side by side at its offsets where the output takes that. */
#include <stdlib.h>
#include <string.h>
#include <libdeflate.h>

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

/* A layout known before a byte is written (each tensor at its own offset) lets a file that takes
 * bytes at offsets get its tensors from several threads at once: each thread through a lane of its
 * own, which gathers its small writes into runs of consecutive bytes (a tensor of four bytes is no
 * system call of its own) and writes the rest, and copies untouched runs, where the layout puts
 * them. */
enum { LANE_BUFFER = 2u << 20 };

typedef struct write_lane {
    widen_output *out;
    int in_fd;
    const uint64_t *at; /* per plan tensor: its offset in the output */
    uint32_t *crc;      /* per plan tensor: the CRC-32 of its bytes, or NULL */
    unsigned char *buffer;
    uint64_t from; /* the output offset of buffer[0] */
    size_t filled;
} write_lane;

typedef struct write_lanes {
    write_lane *lane;
    unsigned count;
} write_lanes;

static void *lane_of(void *user, unsigned k)
{
    write_lanes *l = user;
    return k < l->count ? &l->lane[k] : NULL;
}

static widen_status lane_flush(write_lane *l, widen_error *err)
{
    widen_status st = l->filled ? l->out->write_at(l->out, l->from, l->buffer, l->filled, err) : WIDEN_OK;
    l->filled = 0;
    return st;
}

static widen_status lane_write(void *user, size_t index, uint64_t offset, const void *data, size_t len, widen_error *err)
{
    write_lane *l = user;
    uint64_t at = l->at[index] + offset;
    widen_status st = WIDEN_OK;
    /* one tensor's bytes come in order, from one thread: its CRC-32 grows as they come */
    if (l->crc) l->crc[index] = libdeflate_crc32(l->crc[index], data, len);
    if (l->filled && (at != l->from + l->filled || l->filled + len > LANE_BUFFER)) st = lane_flush(l, err);
    if (st) return st;
    if (len >= LANE_BUFFER) return l->out->write_at(l->out, at, data, len, err);
    if (!l->buffer && !(l->buffer = widen_buffer_alloc(LANE_BUFFER))) return widen_fail(err, WIDEN_EIO, "out of memory");
    if (!l->filled) l->from = at;
    memcpy(l->buffer + l->filled, data, len);
    l->filled += len;
    return WIDEN_OK;
}

static widen_status lane_copy(void *user, size_t index, uint64_t offset, uint64_t in_offset, size_t len, widen_error *err)
{
    write_lane *l = user;
    widen_status st = lane_flush(l, err);
    return st ? st : l->out->copy_at(l->out, l->at[index] + offset, l->in_fd, in_offset, len, err);
}

static widen_status lane_copied(void *user, size_t index, uint64_t len, uint32_t crc, widen_error *err)
{
    (void)len, (void)err;
    write_lane *l = user;
    l->crc[index] = crc;
    return WIDEN_OK;
}

widen_status widen_write_tensors_at(const widen_checkpoint *ckpt, widen_plan *plan, const uint64_t *at, uint32_t *crc,
                                    widen_output *out, const widen_exec_options *options, widen_error *err)
{
    write_lanes lanes = {.lane = calloc(options->threads, sizeof *lanes.lane), .count = options->threads};
    if (!lanes.lane) return widen_fail(err, WIDEN_EIO, "out of memory");
    for (unsigned k = 0; k < lanes.count; k++)
        lanes.lane[k] = (write_lane){.out = out, .in_fd = widen_checkpoint_fd(ckpt), .at = at, .crc = crc};
    for (size_t i = 0; crc && i < plan->count; i++) crc[i] = 0;
    widen_exec_options eo = *options;
    eo.copy = lane_copy;
    eo.lane = lane_of;
    /* records copied one at a time, each with its CRC-32 (from the input's directory, or the
     * hashing pass) */
    eo.copy_one_item = crc != NULL;
    eo.copied = crc ? lane_copied : NULL;
    widen_status st = widen_execute(ckpt, plan, &eo, lane_write, &lanes, err);
    for (unsigned k = 0; k < lanes.count; k++) {
        if (!st) st = lane_flush(&lanes.lane[k], err);
        widen_buffer_free(lanes.lane[k].buffer, LANE_BUFFER);
    }
    free(lanes.lane);
    return st;
}

static widen_status write_at_offsets(const widen_checkpoint *ckpt, widen_plan *plan, const unsigned char *header,
                                     size_t header_len, widen_output *out, const widen_exec_options *options,
                                     widen_error *err)
{
    uint64_t base = out->position;
    uint64_t *at = malloc((plan->count ? plan->count : 1) * sizeof *at);
    widen_status st = at ? out->write_at(out, base, header, header_len, err) : widen_fail(err, WIDEN_EIO, "out of memory");
    uint64_t data = base + header_len;
    for (size_t i = 0; at && i < plan->count; data += plan->tensors[i++].nbytes) at[i] = data;
    if (!st) st = widen_write_tensors_at(ckpt, plan, at, NULL, out, options, err);
    if (!st) out->position = base + header_len + plan->data_bytes;
    free(at);
    return st;
}

widen_status widen_safetensors_write(const widen_checkpoint *ckpt, widen_plan *plan, const char *provenance,
                                     widen_output *out, const widen_exec_options *options, widen_error *err)
{
    unsigned char *header = NULL;
    size_t header_len = 0;
    widen_status st = widen_safetensors_header(plan, ckpt, provenance, &header, &header_len, err);
    if (!st && out->write_at && out->copy_at && options->threads > 1) {
        st = write_at_offsets(ckpt, plan, header, header_len, out, options, err);
        free(header);
        return st;
    }
    if (!st) st = out->write(out, header, header_len, err);
    free(header);
    if (st) return st;
    write_sink ws = {.out = out, .in_fd = widen_checkpoint_fd(ckpt)};
    widen_exec_options eo = *options;
    eo.copy = out->copy ? sink_copy : NULL; /* no copy at all (a pipe, a comparison): no run hashed twice */
    return widen_execute(ckpt, plan, &eo, sink_write, &ws, err);
}

