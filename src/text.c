/* text.c: growing text buffers and JSON strings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

void widen_text_add(widen_text *t, const char *s, size_t n)
{
    if (t->failed) return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1) cap *= 2;
        char *grown = realloc(t->data, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
}

void widen_text_puts(widen_text *t, const char *s)
{
    widen_text_add(t, s, strlen(s));
}

void widen_text_uint(widen_text *t, uint64_t v)
{
    char buf[24];
    widen_text_add(t, buf, (size_t)snprintf(buf, sizeof buf, "%llu", (unsigned long long)v));
}

/* The length of the valid UTF-8 sequence at s, 0 if there is none. */
static size_t utf8_sequence(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    for (size_t j = 1; j < k; j++)
        if ((s[j] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0) || (c == 0xf0 && s[1] < 0x90) ||
        (c == 0xf4 && s[1] >= 0x90))
        return 0;
    return k;
}

void widen_text_json_string(widen_text *t, const char *text)
{
    const unsigned char *s = (const unsigned char *)text, *run = s;
    widen_text_add(t, "\"", 1);
    while (*s) {
        unsigned char c = *s;
        size_t k = c < 0x80 ? 1 : utf8_sequence(s);
        if (k > 1 || (k == 1 && c >= 0x20 && c != '"' && c != '\\')) {
            s += k;
            continue;
        }
        widen_text_add(t, (const char *)run, (size_t)(s - run));
        char esc[8];
        const char *named = !k ? "\\ufffd" : c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\t' ? "\\t"
                            : c == '\r' ? "\\r" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
        if (!named) snprintf(esc, sizeof esc, "\\u%04x", c);
        widen_text_puts(t, named ? named : esc);
        run = ++s;
    }
    widen_text_add(t, (const char *)run, (size_t)(s - run));
    widen_text_add(t, "\"", 1);
}
