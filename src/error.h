/* error.h: filling widen_error values (shared by the kernels and the rest of the library). */
#ifndef WIDEN_ERROR_H
#define WIDEN_ERROR_H

#include "widen/widen.h"

/* Sets err (if not NULL) and returns its status. printf-style, one line. */
widen_status widen_fail(widen_error *err, widen_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* widen_fail with err->hint set: the caller's setting that would change the outcome. */
widen_status widen_fail_hint(widen_error *err, widen_hint hint, widen_status status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Escapes text in place (within size bytes): control characters, bytes that are not UTF-8, C1
 * controls, line separators and bidirectional overrides become \n, \x1b, \u202e ... */
void widen_escape(char *text, size_t size);

/* Fills a caller's struct of `size` bytes (size as the caller's header has it) from `defaults`, this
 * library's `known` bytes: what this library does not know is zeroed, nothing past `size` is written. */
void widen_options_init(void *out, size_t size, const void *defaults, size_t known);

/* Reads a caller's options struct (widen.h, "Options structs that can grow") into `out`, which holds
 * the defaults and is `size` bytes: the caller's first `given->size` bytes replace them where this
 * library knows the fields. WIDEN_EUSAGE (naming `what`) for a size under `min_size`, or for nonzero
 * bytes past `size` (fields of a newer header). given NULL: the defaults stay. */
widen_status widen_options_read(void *out, size_t size, size_t min_size, const void *given, const char *what,
                                widen_error *err);

#endif
