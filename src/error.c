/* error.c: filling widen_error values. */
#include <stdarg.h>
#include <stdio.h>

#include "error.h"

widen_status widen_fail(widen_error *err, widen_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}
