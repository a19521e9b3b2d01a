/* progress.c: one run's progress made of steps (a file compared, then read back; the shards of a
 * folder), each scaled into its share of the run's fixed total. */
#include "internal.h"

void widen_meter_next(widen_meter *m, uint64_t share)
{
    m->base += m->share;
    m->share = share;
}

int widen_meter_progress(void *user, uint64_t done, uint64_t total)
{
    widen_meter *m = user;
    if (!m->fn) return 0;
    if (done > total) done = total;
    /* a step of 0 bytes is still a point to stop at */
    uint64_t at = m->base + (total ? (uint64_t)((double)m->share * ((double)done / (double)total)) : m->share);
    if (total && done == total) at = m->base + m->share; /* exactly, whatever the rounding */
    if (at > m->total) at = m->total;
    if (at < m->reported) at = m->reported;
    m->reported = at;
    return m->fn(m->user, at, m->total);
}

int widen_meter_end(widen_meter *m)
{
    if (!m->fn || (m->reported == m->total && m->total)) return 0;
    m->reported = m->total;
    return m->fn(m->user, m->total, m->total);
}
