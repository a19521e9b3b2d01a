/* safetensors.c: the safetensors header: a reader that enforces every rule of the reference reader,
 * and a writer that lays out what the reference writer lays out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dtype.h"
#include "../internal.h"
#include "../text.h"

#define MAX_HEADER 100000000ull

static int by_offsets(const void *a, const void *b)
{
    const widen_tensor_info *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* The header is parsed in one pass into compact records (no JSON tree: an 83 MB header is 1.3
 * million tensors), with the reference reader's rules: strict JSON (serde_json), duplicate keys
 * refused, unknown tensor fields ignored, nesting deeper than serde_json's 128 refused. Strings are
 * decoded into one pool, which no decoded string outgrows (a JSON string is never shorter than its
 * value). */
enum { MAX_NESTING = 128 };

typedef struct parser {
    const unsigned char *p, *end, *start;
    widen_checkpoint *c;
    char *pool; /* decoded strings, NUL-terminated, back to back */
    size_t used;
    widen_error *err;
    size_t tensor_cap, meta_cap;
} parser;

static widen_status bad(parser *ps, const char *what)
{
    return widen_fail(ps->err, WIDEN_EFORMAT, "%s: safetensors header is not valid: %s (at byte %llu)", ps->c->path, what,
                      (unsigned long long)(ps->p - ps->start));
}

static void ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int take(parser *ps, unsigned char c)
{
    ws(ps);
    if (ps->p < ps->end && *ps->p == c) {
        ps->p++;
        return 1;
    }
    return 0;
}

static int hex4(const unsigned char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                           : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16;
        if (d > 15) return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

/* A JSON string into the pool: escapes decoded, UTF-8 checked, NUL (\u0000) refused (names are C
 * strings). */
static widen_status string(parser *ps, const char **out, size_t *len)
{
    ws(ps);
    if (ps->p >= ps->end || *ps->p != '"') return bad(ps, "a string was expected");
    ps->p++;
    char *dst = ps->pool + ps->used, *d = dst;
    while (1) {
        if (ps->p >= ps->end) return bad(ps, "a string does not end");
        unsigned char c = *ps->p++;
        if (c == '"') break;
        if (c < 0x20) return bad(ps, "a control character inside a string");
        if (c == '\\') {
            if (ps->p >= ps->end) return bad(ps, "a string does not end");
            unsigned char e = *ps->p++;
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                *d++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
                continue;
            }
            unsigned v, lo;
            if (e != 'u' || ps->end - ps->p < 4 || hex4(ps->p, &v)) return bad(ps, "a bad escape in a string");
            ps->p += 4;
            if (v >= 0xdc00 && v <= 0xdfff) return bad(ps, "a lone surrogate in a string");
            if (v >= 0xd800 && v <= 0xdbff) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo) || lo < 0xdc00 ||
                    lo > 0xdfff)
                    return bad(ps, "a lone surrogate in a string");
                ps->p += 6;
                v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (v == 0) return bad(ps, "a NUL character in a string");
            if (v < 0x80) *d++ = (char)v;
            else if (v < 0x800) *d++ = (char)(0xc0 | v >> 6), *d++ = (char)(0x80 | (v & 0x3f));
            else if (v < 0x10000)
                *d++ = (char)(0xe0 | v >> 12), *d++ = (char)(0x80 | ((v >> 6) & 0x3f)), *d++ = (char)(0x80 | (v & 0x3f));
            else
                *d++ = (char)(0xf0 | v >> 18), *d++ = (char)(0x80 | ((v >> 12) & 0x3f)),
                *d++ = (char)(0x80 | ((v >> 6) & 0x3f)), *d++ = (char)(0x80 | (v & 0x3f));
            continue;
        }
        if (c >= 0x80) { /* a UTF-8 sequence, checked whole */
            const unsigned char *q = ps->p - 1;
            size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
            if (!k || (size_t)(ps->end - q) < k) return bad(ps, "a string that is not UTF-8");
            for (size_t j = 1; j < k; j++)
                if ((q[j] & 0xc0) != 0x80) return bad(ps, "a string that is not UTF-8");
            if ((c == 0xe0 && q[1] < 0xa0) || (c == 0xed && q[1] >= 0xa0) || (c == 0xf0 && q[1] < 0x90) ||
                (c == 0xf4 && q[1] >= 0x90))
                return bad(ps, "a string that is not UTF-8");
            memcpy(d, q, k);
            d += k;
            ps->p = q + k;
            continue;
        }
        *d++ = (char)c;
    }
    *d++ = '\0';
    ps->used += (size_t)(d - dst);
    *out = dst;
    *len = (size_t)(d - dst - 1);
    return WIDEN_OK;
}

/* A non-negative JSON integer (as serde reads a usize: no sign, fraction or exponent) below 2^63. */
static widen_status unsigned_int(parser *ps, uint64_t *out)
{
    ws(ps);
    const unsigned char *q = ps->p;
    uint64_t v = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        if (v > (UINT64_MAX / 2 - 9) / 10) return bad(ps, "an integer too large");
        v = v * 10 + (uint64_t)(*ps->p++ - '0');
    }
    if (ps->p == q) return bad(ps, "a non-negative integer was expected");
    if (ps->p - q > 1 && *q == '0') return bad(ps, "an integer with a leading zero");
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E')) return bad(ps, "a number that is not an integer");
    *out = v;
    return WIDEN_OK;
}

/* Any JSON value, checked and skipped (unknown fields of a tensor, which the reference ignores). */
static widen_status skip_value(parser *ps, int depth)
{
    if (depth > MAX_NESTING) return bad(ps, "nesting deeper than 128 levels");
    ws(ps);
    if (ps->p >= ps->end) return bad(ps, "a value was expected");
    const char *s;
    size_t len, mark = ps->used;
    widen_status st = WIDEN_OK;
    switch (*ps->p) {
    case '"':
        st = string(ps, &s, &len);
        ps->used = mark; /* not kept */
        return st;
    case '{':
        ps->p++;
        if (take(ps, '}')) return WIDEN_OK;
        do {
            if ((st = string(ps, &s, &len))) return st;
            ps->used = mark;
            if (!take(ps, ':')) return bad(ps, "':' was expected");
            if ((st = skip_value(ps, depth + 1))) return st;
        } while (take(ps, ','));
        return take(ps, '}') ? WIDEN_OK : bad(ps, "'}' was expected");
    case '[':
        ps->p++;
        if (take(ps, ']')) return WIDEN_OK;
        do
            if ((st = skip_value(ps, depth + 1))) return st;
        while (take(ps, ','));
        return take(ps, ']') ? WIDEN_OK : bad(ps, "']' was expected");
    default: break;
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, words[i], n) == 0) {
            ps->p += n;
            return WIDEN_OK;
        }
    }
    /* a number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
    const unsigned char *q = ps->p;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end || *q < '0' || *q > '9') return bad(ps, "a value was expected");
    if (*q == '0') q++;
    else while (q < ps->end && *q >= '0' && *q <= '9') q++;
    if (q < ps->end && *q == '.') {
        if (++q >= ps->end || *q < '0' || *q > '9') return bad(ps, "a bad number");
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') return bad(ps, "a bad number");
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    ps->p = q;
    return WIDEN_OK;
}

static widen_status parse_tensor(parser *ps, const char *name, uint64_t data_start, widen_tensor_info *t)
{
    widen_error *err = ps->err;
    const char *p = ps->c->path;
    if (!take(ps, '{')) return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' is not a JSON object", p, name);
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    uint64_t begin = 0, end = 0;
    widen_status st;
    if (!take(ps, '}')) {
        do {
            const char *key;
            size_t len, mark = ps->used;
            if ((st = string(ps, &key, &len))) return st;
            ps->used = mark;
            if (!take(ps, ':')) return bad(ps, "':' was expected");
            int *seen = strcmp(key, "dtype") == 0 ? &have_dtype : strcmp(key, "shape") == 0 ? &have_shape
                        : strcmp(key, "data_offsets") == 0 ? &have_offsets : NULL;
            if (seen && (*seen)++)
                return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has two '%s' fields", p, name, key);
            if (seen == &have_dtype) {
                const char *dt;
                ws(ps);
                if (ps->p >= ps->end || *ps->p != '"')
                    return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has no dtype string", p, name);
                if ((st = string(ps, &dt, &len))) return st;
                ps->used = mark;
                if (widen_dtype_from_name(dt, &t->dtype) != 0)
                    return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has unknown dtype '%s'", p,
                                      name, dt);
            } else if (seen == &have_shape) {
                if (!take(ps, '['))
                    return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has no shape array", p, name);
                if (!take(ps, ']')) {
                    do {
                        if (t->rank == WIDEN_MAX_RANK)
                            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has a rank over %d",
                                              p, name, WIDEN_MAX_RANK);
                        if (unsigned_int(ps, &t->shape[t->rank]))
                            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': shape entries must "
                                              "be non-negative integers", p, name);
                        t->rank++;
                    } while (take(ps, ','));
                    if (!take(ps, ']')) return bad(ps, "']' was expected");
                }
            } else if (seen == &have_offsets) {
                if (!take(ps, '[') || unsigned_int(ps, &begin) || !take(ps, ',') || unsigned_int(ps, &end) || !take(ps, ']'))
                    return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets must be two "
                                      "non-negative integers", p, name);
            } else if ((st = skip_value(ps, 2))) {
                return st;
            }
        } while (take(ps, ','));
        if (!take(ps, '}')) return bad(ps, "'}' was expected");
    }
    if (!have_dtype) return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has no dtype string", p, name);
    if (!have_shape) return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' has no shape array", p, name);
    if (!have_offsets)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets must be two non-negative "
                          "integers", p, name);
    uint64_t count = 1;
    for (int i = 0; i < t->rank; i++)
        if (__builtin_mul_overflow(count, t->shape[i], &count))
            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': element count overflows", p, name);
    unsigned bits = widen_dtype_bits(t->dtype);
    if (count > UINT64_MAX / bits)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': byte size overflows", p, name);
    if (count * bits % 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': %llu %s elements are not a whole "
                          "number of bytes", p, name, (unsigned long long)count, widen_dtype_name(t->dtype));
    if (end < begin)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets [%llu, %llu] end "
                          "before they begin", p, name, (unsigned long long)begin, (unsigned long long)end);
    if (end - begin != count * bits / 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s': data_offsets [%llu, %llu] hold "
                          "%llu bytes but %s with %llu elements needs %llu", p, name, (unsigned long long)begin,
                          (unsigned long long)end, (unsigned long long)(end - begin), widen_dtype_name(t->dtype),
                          (unsigned long long)count, (unsigned long long)(count * bits / 8));
    if (begin > ps->c->size - data_start)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' starts past the end of the file",
                          p, name);
    t->offset = data_start + begin;
    t->nbytes = end - begin;
    return WIDEN_OK;
}

static widen_status parse_metadata(parser *ps)
{
    widen_checkpoint *c = ps->c;
    widen_error *err = ps->err;
    ws(ps);
    if ((size_t)(ps->end - ps->p) >= 4 && memcmp(ps->p, "null", 4) == 0) { /* Option<HashMap>: None */
        ps->p += 4;
        return WIDEN_OK;
    }
    if (!take(ps, '{'))
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: __metadata__ is not an object", c->path);
    if (take(ps, '}')) return WIDEN_OK;
    widen_table keys = {0};
    widen_status st = WIDEN_OK;
    do {
        const char *key, *value;
        size_t klen, vlen;
        if ((st = string(ps, &key, &klen))) break;
        if (!take(ps, ':')) {
            st = bad(ps, "':' was expected");
            break;
        }
        ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            st = widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: __metadata__ value of '%s' is not a string",
                            c->path, key);
            break;
        }
        if ((st = string(ps, &value, &vlen))) break;
        int r = widen_table_put(&keys, key, klen, 0, NULL);
        if (r <= 0) {
            st = r < 0 ? widen_fail(err, WIDEN_EIO, "out of memory")
                       : widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: __metadata__ has the key '%s' twice",
                                    c->path, key);
            break;
        }
        if (c->metadata_count == ps->meta_cap) {
            size_t cap = ps->meta_cap ? 2 * ps->meta_cap : 16;
            widen_metadata_entry *grown = realloc(c->metadata, cap * sizeof *grown);
            if (!grown) {
                st = widen_fail(err, WIDEN_EIO, "out of memory");
                break;
            }
            c->metadata = grown;
            ps->meta_cap = cap;
        }
        c->metadata[c->metadata_count++] = (widen_metadata_entry){.key = (char *)key, .value = (char *)value};
    } while (take(ps, ','));
    widen_table_free(&keys);
    if (!st && !take(ps, '}')) st = bad(ps, "'}' was expected");
    return st;
}

widen_status widen_safetensors_read(widen_checkpoint *c, widen_error *err)
{
    const char *p = c->path;
    if (c->size < 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a safetensors file: %llu bytes, shorter than the 8-byte header "
                          "length", p, (unsigned long long)c->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | c->map[i];
    if (n > MAX_HEADER)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a safetensors file: header length %llu is over the 100,000,000 "
                          "limit", p, (unsigned long long)n);
    if (n > c->size - 8)
        return widen_fail(err, WIDEN_EFORMAT, "%s: not a safetensors file: header length %llu runs past the end of the "
                          "%llu-byte file", p, (unsigned long long)n, (unsigned long long)c->size);
    parser ps = {.p = c->map + 8, .end = c->map + 8 + n, .start = c->map + 8, .c = c, .err = err};
    if (!(c->pool = malloc(n + 1))) return widen_fail(err, WIDEN_EIO, "out of memory");
    ps.pool = c->pool;
    widen_status st = WIDEN_OK;
    int have_metadata = 0;
    if (!take(&ps, '{')) return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header is not a JSON object", p);
    if (!take(&ps, '}')) {
        do {
            const char *key;
            size_t len;
            if ((st = string(&ps, &key, &len))) return st;
            if (!take(&ps, ':')) return bad(&ps, "':' was expected");
            if (strcmp(key, "__metadata__") == 0) {
                if (have_metadata++)
                    return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header has __metadata__ twice", p);
                if ((st = parse_metadata(&ps))) return st;
                continue;
            }
            if (c->count == ps.tensor_cap) {
                size_t cap = ps.tensor_cap ? 2 * ps.tensor_cap : 64;
                widen_tensor_info *grown = realloc(c->tensors, cap * sizeof *grown);
                if (!grown) return widen_fail(err, WIDEN_EIO, "out of memory");
                c->tensors = grown;
                ps.tensor_cap = cap;
            }
            widen_tensor_info *t = &c->tensors[c->count];
            memset(t, 0, sizeof *t);
            t->name = key;
            if ((st = parse_tensor(&ps, key, 8 + n, t))) return st;
            int r = widen_table_put(&c->by_name, key, len, c->count, NULL);
            if (r < 0) return widen_fail(err, WIDEN_EIO, "out of memory");
            if (r == 0) return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header names tensor '%s' twice", p, key);
            c->logical_bytes += t->nbytes;
            c->count++;
        } while (take(&ps, ','));
        if (!take(&ps, '}')) return bad(&ps, "'}' was expected");
    }
    ws(&ps);
    if (ps.p != ps.end) return bad(&ps, "text after the header's object");
    /* file order: by offset; the name table then holds stale indices, rebuilt by the caller */
    if (c->count) qsort(c->tensors, c->count, sizeof *c->tensors, by_offsets);
    widen_table_free(&c->by_name);
    uint64_t expect = 8 + n;
    for (size_t i = 0; i < c->count; i++) {
        const widen_tensor_info *t = &c->tensors[i];
        if (t->offset != expect)
            return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors header: tensor '%s' begins at data offset %llu, "
                              "expected %llu (%s)", p, t->name, (unsigned long long)(t->offset - 8 - n),
                              (unsigned long long)(expect - 8 - n), t->offset > expect ? "a gap" : "an overlap");
        expect = t->offset + t->nbytes;
    }
    if (expect != c->size)
        return widen_fail(err, WIDEN_EFORMAT, "%s: safetensors data ends at byte %llu but the file has %llu bytes (%s)",
                          p, (unsigned long long)expect, (unsigned long long)c->size,
                          expect < c->size ? "trailing bytes" : "truncated");
    return st;
}

/* ---------------------------------------------------------------------------------------------- */

widen_status widen_safetensors_header(const widen_plan *plan, const widen_checkpoint *in,
                                      const char *provenance, unsigned char **header, size_t *len,
                                      widen_error *err)
{
    widen_text t = {0};
    widen_text_add(&t, "        {", 9); /* the length, filled in below */
    int from_pt = strcmp(in->format, "pt") == 0, first = 1;
    if (in->metadata_count || provenance || from_pt) {
        widen_text_puts(&t, "\"__metadata__\":{");
        /* what safetensors.torch.save_file writes, and Hugging Face transformers requires */
        if (from_pt) widen_text_puts(&t, "\"format\":\"pt\""), first = 0;
        for (size_t i = 0; i < in->metadata_count; i++) {
            if (strcmp(in->metadata[i].key, WIDEN_PROVENANCE_KEY) == 0) continue;
            if (!first) widen_text_add(&t, ",", 1);
            first = 0;
            widen_text_json_string(&t, in->metadata[i].key);
            widen_text_add(&t, ":", 1);
            widen_text_json_string(&t, in->metadata[i].value);
        }
        if (provenance) {
            if (!first) widen_text_add(&t, ",", 1);
            widen_text_json_string(&t, WIDEN_PROVENANCE_KEY);
            widen_text_add(&t, ":", 1);
            widen_text_json_string(&t, provenance);
        }
        widen_text_add(&t, "}", 1);
        first = 0;
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const widen_plan_tensor *p = &plan->tensors[i];
        if (!first) widen_text_add(&t, ",", 1);
        first = 0;
        widen_text_json_string(&t, p->name);
        widen_text_puts(&t, ":{\"dtype\":");
        widen_text_json_string(&t, widen_dtype_name(p->dtype));
        widen_text_puts(&t, ",\"shape\":[");
        for (int d = 0; d < p->rank; d++) {
            if (d) widen_text_add(&t, ",", 1);
            widen_text_uint(&t, p->shape[d]);
        }
        widen_text_puts(&t, "],\"data_offsets\":[");
        widen_text_uint(&t, offset);
        widen_text_add(&t, ",", 1);
        widen_text_uint(&t, offset + p->nbytes);
        widen_text_puts(&t, "]}");
        offset += p->nbytes;
    }
    widen_text_add(&t, "}", 1);
    /* Padded with spaces: to a multiple of 8, as the reference pads; or, where the output holds a run
     * of untouched tensors of at least WIDEN_CLONE_MIN bytes, so that the longest such run lies at its
     * input offset modulo WIDEN_CLONE_BLOCK, whose whole blocks a file system that clones then shares
     * instead of copying. A function of the input and the plan alone, whatever the output's file
     * system. */
    uint64_t run_bytes = 0, run_out = 0, run_in = 0, best = 0, best_out = 0, best_in = 0, at = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const widen_plan_tensor *p = &plan->tensors[i];
        int copy = p->op == WIDEN_OP_COPY && !p->strided;
        int continues = copy && i > 0 && run_bytes && p->in->offset == plan->tensors[i - 1].in->offset +
                                                                       plan->tensors[i - 1].in->nbytes;
        if (copy && !continues) run_bytes = 0, run_out = at, run_in = p->in->offset;
        run_bytes = copy ? run_bytes + p->nbytes : 0;
        if (run_bytes > best) best = run_bytes, best_out = run_out, best_in = run_in;
        at += p->nbytes;
    }
    if (best >= WIDEN_CLONE_MIN) {
        size_t pad = (size_t)((best_in + WIDEN_CLONE_BLOCK - (t.len + best_out) % WIDEN_CLONE_BLOCK) % WIDEN_CLONE_BLOCK);
        for (size_t k = 0; k < pad && !t.failed; k++) widen_text_add(&t, " ", 1);
    } else {
        while (!t.failed && (t.len - 8) % 8) widen_text_add(&t, " ", 1);
    }
    if (t.failed) {
        free(t.data);
        return widen_fail(err, WIDEN_EIO, "out of memory");
    }
    uint64_t n = t.len - 8;
    if (n > MAX_HEADER) {
        free(t.data);
        return widen_fail(err, WIDEN_EFORMAT, "%s: the safetensors header of the output would be %llu bytes, over the "
                          "100,000,000 that safetensors readers accept", in->path, (unsigned long long)n);
    }
    for (int b = 0; b < 8; b++) t.data[b] = (char)(unsigned char)(n >> (8 * b));
    *header = (unsigned char *)t.data;
    *len = t.len;
    return WIDEN_OK;
}
