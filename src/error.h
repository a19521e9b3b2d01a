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

#endif
