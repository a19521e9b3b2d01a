/* error.c: filling widen_error values, and escaping what reaches a message: names come from files,
 * and a newline or an escape sequence in one must not forge a line or reach the terminal. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* The length of the valid UTF-8 sequence at s (n bytes left), 0 if there is none. */
static size_t utf8_length(const unsigned char *s, size_t n, unsigned *code)
{
    unsigned char c = s[0];
    size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!k || n < k) return 0;
    unsigned v = c & (k == 2 ? 0x1f : k == 3 ? 0x0f : 0x07);
    for (size_t j = 1; j < k; j++) {
        if ((s[j] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[j] & 0x3f);
    }
    if ((k == 3 && v < 0x800) || (k == 4 && (v < 0x10000 || v > 0x10ffff)) || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *code = v;
    return k;
}

size_t widen_escape_text(const char *text, char *out, size_t size)
{
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    size_t n = strlen((const char *)s), used = 0;
    if (!out) size = 0; /* then only the length is counted */
    for (size_t i = 0; i < n;) {
        char piece[16];
        size_t len;
        unsigned code = 0;
        size_t k = s[i] < 0x80 ? 1 : utf8_length(s + i, n - i, &code);
        if (s[i] < 0x20 || s[i] == 0x7f) {
            const char *named = s[i] == '\n' ? "\\n" : s[i] == '\t' ? "\\t" : s[i] == '\r' ? "\\r" : NULL;
            len = named ? (size_t)snprintf(piece, sizeof piece, "%s", named) : (size_t)snprintf(piece, sizeof piece, "\\x%02x", s[i]);
            k = 1;
        } else if (k == 0) { /* not UTF-8 */
            len = (size_t)snprintf(piece, sizeof piece, "\\x%02x", s[i]);
            k = 1;
        } else if (k > 1 && ((code >= 0x80 && code <= 0x9f) || code == 0x2028 || code == 0x2029 ||
                             (code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069))) {
            /* C1 controls (a terminal may take U+009B for an escape), line separators, bidi overrides */
            len = (size_t)snprintf(piece, sizeof piece, "\\u%04x", code);
        } else {
            memcpy(piece, s + i, k);
            len = k;
        }
        if (size && used + len < size) memcpy(out + used, piece, len);
        else if (size && used < size) size = used + 1; /* stop writing: never half an escape or a character */
        used += len;
        i += k;
    }
    if (size) out[used < size ? used : size - 1] = '\0';
    return used;
}

void widen_escape(char *text, size_t size)
{
    size_t n = strlen(text);
    char *copy = malloc(n + 1);
    if (!copy) { /* cannot escape: cut at the first byte that would need it */
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)text[i] < 0x20 || (unsigned char)text[i] >= 0x7f) text[i] = '\0';
        return;
    }
    memcpy(copy, text, n + 1);
    widen_escape_text(copy, text, size);
    free(copy);
}

static widen_status fail_v(widen_error *err, widen_hint hint, widen_status status, const char *fmt, va_list ap)
{
    if (err) {
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        widen_escape(err->message, sizeof err->message);
        err->status = status;
        err->hint = hint;
    }
    return status;
}

widen_status widen_fail(widen_error *err, widen_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(err, WIDEN_HINT_NONE, status, fmt, ap);
    va_end(ap);
    return status;
}

widen_status widen_fail_hint(widen_error *err, widen_hint hint, widen_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(err, hint, status, fmt, ap);
    va_end(ap);
    return status;
}

unsigned widen_version_number(void)
{
    return WIDEN_VERSION_NUMBER;
}

void widen_options_init(void *out, size_t size, const void *defaults, size_t known)
{
    if (!out || size < sizeof size) return; /* then the struct is refused where it is used */
    memset(out, 0, size);
    memcpy(out, defaults, size < known ? size : known);
    memcpy(out, &size, sizeof size);
}

widen_status widen_options_read(void *out, size_t size, size_t min_size, const void *given, const char *what,
                                widen_error *err)
{
    if (!given) return WIDEN_OK;
    size_t given_size;
    memcpy(&given_size, given, sizeof given_size);
    if (given_size < min_size || given_size > (64u << 10)) /* (an uninitialised struct, most likely) */
        return widen_fail(err, WIDEN_EUSAGE, "%s.size is %zu, not a size this library knows (%zu): fill the struct "
                          "with %s_init first", what, given_size, size, what);
    for (size_t i = size; i < given_size; i++)
        if (((const unsigned char *)given)[i])
            return widen_fail(err, WIDEN_EUSAGE, "%s sets fields this library (%s) does not know: it is older "
                              "than the header the program was built with", what, WIDEN_VERSION_STRING);
    memcpy((unsigned char *)out + sizeof given_size, (const unsigned char *)given + sizeof given_size,
           (given_size < size ? given_size : size) - sizeof given_size);
    return WIDEN_OK;
}
