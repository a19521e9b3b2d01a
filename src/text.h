/* text.h: growing text buffers, and JSON written into them as jansson and Python's json.dumps
 * (ensure_ascii=False) write it, without a tree in memory (a header or a manifest may name a million
 * tensors). */
#ifndef WIDEN_TEXT_H
#define WIDEN_TEXT_H

#include <stddef.h>
#include <stdint.h>

typedef struct widen_text {
    char *data; /* NUL-terminated while not failed */
    size_t len, cap;
    int failed; /* out of memory: later additions do nothing */
} widen_text;

void widen_text_add(widen_text *t, const char *s, size_t n);
void widen_text_puts(widen_text *t, const char *s);
void widen_text_uint(widen_text *t, uint64_t v);
/* A JSON string: the quote, the backslash and control characters escaped, UTF-8 as it is (a byte
 * that is not UTF-8 becomes U+FFFD). */
void widen_text_json_string(widen_text *t, const char *s);

#endif
