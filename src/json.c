/* json.c: strict JSON with byte spans, for the documents of model folders, and span edits. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "table.h"

typedef struct jparser {
    const unsigned char *p, *end, *start;
    widen_json *doc;
    size_t cap;
    size_t used; /* of the pool */
    const char *path;
    widen_error *err;
} jparser;

static widen_status bad(jparser *ps, const char *what)
{
    return widen_fail(ps->err, WIDEN_EFORMAT, "%s: not valid JSON: %s (at byte %llu)", ps->path, what,
                      (unsigned long long)(ps->p - ps->start));
}

static void ws(jparser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static size_t new_node(jparser *ps, widen_json_kind kind)
{
    widen_json *d = ps->doc;
    if (d->count >= WIDEN_JSON_MAX_NODES) return WJ_NONE - 1;
    if (d->count == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        widen_json_node *grown = realloc(d->nodes, cap * sizeof *grown);
        if (!grown) return WJ_NONE;
        d->nodes = grown;
        ps->cap = cap;
    }
    widen_json_node *n = &d->nodes[d->count];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->start = (size_t)(ps->p - ps->start);
    n->first = n->next = WJ_NONE;
    return d->count++;
}

static int hex4(const unsigned char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                               : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16;
        if (d > 15) return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) return out[0] = (char)cp, 1;
    if (cp < 0x800) return out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f)), 2;
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The length of the valid UTF-8 sequence at p (before end), 0 if there is none. */
static size_t utf8_at(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!k || (size_t)(end - p) < k) return 0;
    for (size_t j = 1; j < k; j++)
        if ((p[j] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) || (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))
        return 0;
    return k;
}

/* A string at ps->p (the quote), decoded into the pool (never longer than its JSON text). */
static widen_status string(jparser *ps, const char **out, size_t *len)
{
    ps->p++;
    char *dst = ps->doc->pool + ps->used, *begin = dst;
    for (;;) {
        if (ps->p >= ps->end) return bad(ps, "unterminated string");
        unsigned char c = *ps->p;
        if (c == '"') break;
        if (c < 0x20) return bad(ps, "a control character inside a string");
        if (c != '\\') {
            size_t k = utf8_at(ps->p, ps->end);
            if (!k) return bad(ps, "bytes that are not UTF-8");
            memcpy(dst, ps->p, k);
            dst += k;
            ps->p += k;
            continue;
        }
        if (ps->end - ps->p < 2) return bad(ps, "unterminated escape");
        unsigned char e = ps->p[1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char values[] = "\"\\/\b\f\n\r\t";
            *dst++ = values[simple - "\"\\/bfnrt"];
            ps->p += 2;
            continue;
        }
        unsigned cp, lo;
        if (e != 'u' || ps->end - ps->p < 6 || !hex4(ps->p + 2, &cp)) return bad(ps, "a bad escape");
        ps->p += 6;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || !hex4(ps->p + 2, &lo) || lo < 0xdc00 ||
                lo > 0xdfff)
                return bad(ps, "a lone surrogate escape");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            ps->p += 6;
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            return bad(ps, "a lone surrogate escape");
        }
        dst += put_utf8(dst, cp);
    }
    ps->p++;
    *dst = '\0';
    *out = begin;
    *len = (size_t)(dst - begin);
    ps->used += *len + 1;
    return WIDEN_OK;
}

static int literal(jparser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, word, n) == 0) {
        ps->p += n;
        return 1;
    }
    return 0;
}

/* A number as Python's json reads one: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, or NaN,
 * Infinity, -Infinity. */
static widen_status number(jparser *ps, widen_json_node *n)
{
    const unsigned char *s = ps->p;
    if (literal(ps, "NaN")) return n->number = NAN, WIDEN_OK;
    if (literal(ps, "Infinity")) return n->number = INFINITY, WIDEN_OK;
    if (literal(ps, "-Infinity")) return n->number = -INFINITY, WIDEN_OK;
    const unsigned char *p = s;
    if (p < ps->end && *p == '-') p++;
    if (p >= ps->end || *p < '0' || *p > '9') return bad(ps, "an unexpected character");
    if (*p == '0') p++;
    else
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    n->integer = 1;
    if (p < ps->end && *p == '.') {
        n->integer = 0;
        if (++p >= ps->end || *p < '0' || *p > '9') return ps->p = p, bad(ps, "a number without digits after '.'");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        n->integer = 0;
        p++;
        if (p < ps->end && (*p == '+' || *p == '-')) p++;
        if (p >= ps->end || *p < '0' || *p > '9') return ps->p = p, bad(ps, "a number without exponent digits");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    size_t len = (size_t)(p - s), digits = len - (s[0] == '-');
    /* Python (3.11 on) refuses to convert integers of more than 4300 digits */
    if (n->integer && digits > 4300) return ps->p = p, bad(ps, "an integer of more than 4300 digits");
    char small[64], *buf = len < sizeof small ? small : malloc(len + 1);
    if (!buf) return widen_fail(ps->err, WIDEN_EIO, "out of memory");
    memcpy(buf, s, len);
    buf[len] = '\0';
    n->number = strtod(buf, NULL);
    if (n->integer && digits <= 20) {
        errno = 0;
        unsigned long long v = strtoull(buf + (s[0] == '-'), NULL, 10);
        n->exact = errno == 0;
        n->whole = v;
        n->negative = s[0] == '-' && v != 0;
    }
    if (buf != small) free(buf);
    ps->p = p;
    return WIDEN_OK;
}

static widen_status value(jparser *ps, int depth, size_t *out);

static widen_status container(jparser *ps, int depth, size_t self, int object)
{
    widen_json *d = ps->doc;
    size_t last = WJ_NONE;
    widen_table keys = {0};
    widen_status st = WIDEN_OK;
    ps->p++;
    ws(ps);
    if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
        ps->p++;
        return WIDEN_OK;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        ws(ps);
        size_t key_start = (size_t)(ps->p - ps->start);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"') {
                st = bad(ps, "an object key that is not a string");
                break;
            }
            if ((st = string(ps, &key, &key_len))) break;
            int added = widen_table_put(&keys, key, key_len, 0, NULL);
            if (added < 0) {
                st = widen_fail(ps->err, WIDEN_EIO, "out of memory");
                break;
            }
            if (!added) {
                char shown[200];
                snprintf(shown, sizeof shown, "the key \"%.120s\" appears twice", key);
                st = bad(ps, shown);
                break;
            }
            ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                st = bad(ps, "':' expected");
                break;
            }
            ps->p++;
            ws(ps);
        }
        size_t child;
        if ((st = value(ps, depth + 1, &child))) break;
        d->nodes[child].key = key;
        d->nodes[child].key_len = key_len;
        d->nodes[child].key_start = object ? key_start : d->nodes[child].start;
        if (last == WJ_NONE) d->nodes[self].first = child;
        else d->nodes[last].next = child;
        last = child;
        d->nodes[self].count++;
        ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
            ps->p++;
            break;
        }
        st = bad(ps, object ? "',' or '}' expected" : "',' or ']' expected");
        break;
    }
    widen_table_free(&keys);
    return st;
}

static widen_status value(jparser *ps, int depth, size_t *out)
{
    if (depth > WIDEN_JSON_MAX_DEPTH) return bad(ps, "nested too deeply");
    ws(ps);
    if (ps->p >= ps->end) return bad(ps, "a value expected");
    unsigned char c = *ps->p;
    widen_json_kind kind = c == '{' ? WJ_OBJECT : c == '[' ? WJ_ARRAY : c == '"' ? WJ_STRING : c == 'n' ? WJ_NULL
                           : c == 't' ? WJ_TRUE : c == 'f' ? WJ_FALSE : WJ_NUMBER;
    size_t self = new_node(ps, kind);
    if (self == WJ_NONE) return widen_fail(ps->err, WIDEN_EIO, "out of memory");
    if (self == WJ_NONE - 1) return bad(ps, "more values than widen reads in one document (2 Mi)");
    widen_status st = WIDEN_OK;
    switch (kind) {
    case WJ_OBJECT:
    case WJ_ARRAY: st = container(ps, depth, self, kind == WJ_OBJECT); break;
    case WJ_STRING: {
        const char *s;
        size_t len;
        if (!(st = string(ps, &s, &len))) {
            ps->doc->nodes[self].str = s;
            ps->doc->nodes[self].len = len;
        }
        break;
    }
    case WJ_NULL: st = literal(ps, "null") ? WIDEN_OK : bad(ps, "an unexpected character"); break;
    case WJ_TRUE: st = literal(ps, "true") ? WIDEN_OK : bad(ps, "an unexpected character"); break;
    case WJ_FALSE: st = literal(ps, "false") ? WIDEN_OK : bad(ps, "an unexpected character"); break;
    case WJ_NUMBER: st = number(ps, &ps->doc->nodes[self]); break;
    }
    if (!st) ps->doc->nodes[self].end = (size_t)(ps->p - ps->start);
    *out = self;
    return st;
}

widen_status widen_json_parse(const char *text, size_t size, const char *path, widen_json *doc, widen_error *err)
{
    memset(doc, 0, sizeof *doc);
    if (size > WIDEN_JSON_MAX_BYTES)
        return widen_fail(err, WIDEN_EFORMAT, "%s: %llu bytes of JSON, more than widen reads in a model folder's "
                          "documents (%u MiB)", path, (unsigned long long)size, WIDEN_JSON_MAX_BYTES >> 20);
    doc->text = text;
    doc->size = size;
    if (!(doc->pool = malloc(size + 1))) return widen_fail(err, WIDEN_EIO, "out of memory");
    jparser ps = {.p = (const unsigned char *)text, .end = (const unsigned char *)text + size,
                  .start = (const unsigned char *)text, .doc = doc, .path = path, .err = err};
    size_t root;
    if (size >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) {
        widen_json_free(doc);
        return widen_fail(err, WIDEN_EFORMAT, "%s: not valid JSON: it begins with a byte order mark, which Python's "
                          "json refuses", path);
    }
    widen_status st = value(&ps, 0, &root);
    if (!st) {
        ws(&ps);
        if (ps.p != ps.end) st = bad(&ps, "extra data after the value");
    }
    if (st) widen_json_free(doc);
    return st;
}

void widen_json_free(widen_json *doc)
{
    free(doc->nodes);
    free(doc->pool);
    memset(doc, 0, sizeof *doc);
}

size_t widen_json_get(const widen_json *doc, size_t obj, const char *key)
{
    if (obj == WJ_NONE || obj >= doc->count || doc->nodes[obj].kind != WJ_OBJECT) return WJ_NONE;
    size_t n = strlen(key);
    for (size_t c = doc->nodes[obj].first; c != WJ_NONE; c = doc->nodes[c].next)
        if (doc->nodes[c].key_len == n && memcmp(doc->nodes[c].key, key, n) == 0) return c;
    return WJ_NONE;
}

void widen_json_replace(widen_json_edits *e, size_t start, size_t end, const char *text)
{
    if (e->failed) return;
    if (e->count == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        widen_json_edit *grown = realloc(e->items, cap * sizeof *grown);
        if (!grown) {
            e->failed = 1;
            return;
        }
        e->items = grown;
        e->cap = cap;
    }
    char *copy = strdup(text);
    if (!copy) {
        e->failed = 1;
        return;
    }
    e->items[e->count++] = (widen_json_edit){start, end, copy};
}

static int by_start(const void *a, const void *b)
{
    const widen_json_edit *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

char *widen_json_apply(const char *text, size_t size, widen_json_edits *e, size_t *len)
{
    if (e->failed) return NULL;
    if (e->count) qsort(e->items, e->count, sizeof *e->items, by_start);
    widen_text t = {0};
    size_t at = 0;
    for (size_t i = 0; i < e->count; i++) {
        const widen_json_edit *x = &e->items[i];
        if (x->start < at || x->end < x->start || x->end > size) { /* overlapping: a bug, never silently */
            free(t.data);
            return NULL;
        }
        widen_text_add(&t, text + at, x->start - at);
        widen_text_puts(&t, x->text);
        at = x->end;
    }
    widen_text_add(&t, text + at, size - at);
    if (t.failed || !t.data) {
        free(t.data);
        return NULL;
    }
    *len = t.len;
    return t.data;
}

void widen_json_edits_free(widen_json_edits *e)
{
    for (size_t i = 0; i < e->count; i++) free(e->items[i].text);
    free(e->items);
    memset(e, 0, sizeof *e);
}

void widen_json_format_double(double v, char out[40])
{
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v < 0 ? "-Infinity" : "Infinity");
        return;
    }
    /* the shortest digits that read back: d.ddde[+-]XX */
    char sci[40];
    for (int precision = 0; precision <= 16; precision++) {
        snprintf(sci, sizeof sci, "%.*e", precision, v);
        if (strtod(sci, NULL) == v) break;
    }
    char digits[24];
    size_t nd = 0;
    const char *p = sci;
    int negative = *p == '-';
    if (negative) p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    char *o = out;
    if (negative) *o++ = '-';
    if (exp >= -5 + 1 && exp < 16) {
        /* fixed: digits around the point, at least one after it */
        if (exp < 0) {
            *o++ = '0';
            *o++ = '.';
            for (int z = 0; z < -exp - 1; z++) *o++ = '0';
            for (size_t i = 0; i < nd; i++) *o++ = digits[i];
        } else {
            for (int i = 0; i <= exp; i++) *o++ = (size_t)i < nd ? digits[i] : '0';
            *o++ = '.';
            if ((size_t)exp + 1 < nd)
                for (size_t i = (size_t)exp + 1; i < nd; i++) *o++ = digits[i];
            else
                *o++ = '0';
        }
        *o = '\0';
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (size_t i = 1; i < nd; i++) *o++ = digits[i];
        }
        snprintf(o, (size_t)(out + 40 - o), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
}
