/* rows.c: plans remaps of short rows as one byte permutation per vector step (any ISA). */
#include <string.h>

#include "kernels.h"

int widen_rows_plan_build(const widen_remap_job *j, size_t width, widen_rows_plan *p)
{
    if (width == 0 || width > 64 || j->src_dtype != j->dst_dtype || j->rows == 0) return 0;
    size_t s = widen_dtype_bits(j->src_dtype) / 8;
    if (j->dst_chan_stride != j->inner || j->dst_row_stride != j->channels * j->inner) return 0;
    size_t in_row = j->src_row_stride * s, out_row = j->channels * j->inner * s;
    if (out_row == 0 || out_row > width || in_row > width) return 0;
    for (size_t n = 0; n < j->channels; n++)
        if (j->map[n].kind > WIDEN_MAP_CONST) return 0; /* arithmetic: the run-by-run path */
    size_t k = width / (in_row > out_row ? in_row : out_row);
    if (k == 0) return 0;
    memset(p, 0, sizeof *p);
    p->width = width;
    p->rows_per_step = k;
    p->in_step = k * in_row;
    p->out_step = k * out_row;
    size_t run = j->inner * s, last_read = 0; /* one past the last byte a row reads */
    for (size_t b = 0; b < width; b++) {
        p->source[b] = -1;
        if (b >= p->out_step) continue;
        size_t row = b / out_row, within = b % out_row, n = within / run, at = within % run;
        const widen_map_entry *e = &j->map[n];
        if (e->kind == WIDEN_MAP_SOURCE) {
            size_t in = (size_t)e->channel * j->src_chan_stride * s + at;
            /* a map may read past its own row (strides that overlap rows, or channels far apart): a
             * byte outside the step's one vector load is not this kernel's */
            if (row * in_row + in >= width) return 0;
            if (in + 1 > last_read) last_read = in + 1;
            p->source[b] = (int16_t)(row * in_row + in);
        } else if (e->kind == WIDEN_MAP_CONST) {
            unsigned char element[8];
            widen_const_element(j->dst_dtype, e->value, element);
            p->fill[b] = element[at % s];
        }
    }
    /* a step loads `width` bytes at step*in_step and stores `width` bytes at step*out_step: both must
     * stay inside what the job may read and write */
    size_t readable = (j->rows - 1) * in_row + last_read, writable = j->rows * out_row;
    size_t steps = j->rows / k;
    while (steps > 0 && ((steps - 1) * p->in_step + width > readable || (steps - 1) * p->out_step + width > writable))
        steps--;
    p->steps = steps;
    return steps > 0;
}
