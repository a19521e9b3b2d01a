/* json.h: the JSON documents of a model folder (shard indexes, configs), read as Python's json
 * module reads them, or refused: strict syntax, UTF-8, NaN and Infinity accepted as Python writes
 * them, duplicate keys refused (Python would keep the last one silently). Every value keeps its byte
 * span, so that a few values can be replaced and every other byte stays as it was written. */
#ifndef WIDEN_JSON_H
#define WIDEN_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "text.h"

/* Documents are small (configs, indexes of up to a few hundred thousand names): at most this many
 * bytes and this deep. */
#define WIDEN_JSON_MAX_BYTES (64u << 20)
#define WIDEN_JSON_MAX_DEPTH 128
/* Values a document may hold (each costs about 100 bytes parsed): an index of a million tensors;
 * twice that in all the documents of a model. */
#define WIDEN_JSON_MAX_NODES (2u << 20)

typedef enum widen_json_kind { WJ_NULL, WJ_FALSE, WJ_TRUE, WJ_NUMBER, WJ_STRING, WJ_ARRAY, WJ_OBJECT } widen_json_kind;

#define WJ_NONE SIZE_MAX

typedef struct widen_json_node {
    widen_json_kind kind;
    size_t start, end;   /* the value's bytes */
    const char *key;     /* an object member's key, decoded; NULL for array items and the root */
    size_t key_len;
    size_t key_start;    /* where a member's key (its opening quote) begins */
    const char *str;     /* WJ_STRING: the decoded value (NUL-terminated; may hold NUL bytes) */
    size_t len;
    double number;       /* WJ_NUMBER */
    int integer;         /* WJ_NUMBER written without fraction or exponent */
    int exact;           /* an integer that fits 64 bits, whose value is `whole` */
    uint64_t whole;
    int negative;
    size_t first, next;  /* first child, next sibling (node indices, WJ_NONE) */
    size_t count;        /* children */
} widen_json_node;

typedef struct widen_json {
    const char *text;    /* the caller's bytes (not owned) */
    size_t size;
    widen_json_node *nodes; /* nodes[0] is the root */
    size_t count;
    char *pool;          /* decoded strings */
} widen_json;

/* Parses `size` bytes; `path` is named in messages. WIDEN_EFORMAT for anything Python's json.loads
 * would refuse, for duplicate keys, lone surrogates, more than WIDEN_JSON_MAX_DEPTH levels or bytes. */
widen_status widen_json_parse(const char *text, size_t size, const char *path, widen_json *doc, widen_error *err);
void widen_json_free(widen_json *doc);

/* The member `key` of object node `obj` (node index), or WJ_NONE. */
size_t widen_json_get(const widen_json *doc, size_t obj, const char *key);

/* Replacements of byte spans of a document, applied at once. */
typedef struct widen_json_edit {
    size_t start, end;
    char *text;
} widen_json_edit;

typedef struct widen_json_edits {
    widen_json_edit *items;
    size_t count, cap;
    int failed; /* out of memory */
} widen_json_edits;

/* Replaces bytes [start, end) (an insertion where start == end). Spans must not overlap. */
void widen_json_replace(widen_json_edits *edits, size_t start, size_t end, const char *text);
/* The document with the edits applied, malloc'ed (NULL when out of memory). */
char *widen_json_apply(const char *text, size_t size, widen_json_edits *edits, size_t *len);
void widen_json_edits_free(widen_json_edits *edits);

/* A double as Python's repr writes it: the shortest digits that read back to the same value, in
 * fixed notation from 1e-4 up to 1e16 (with ".0" on whole numbers), in exponent notation outside
 * ("1e-05", "1e+16"); NaN and Infinity as Python's json writes them. */
void widen_json_format_double(double value, char out[40]);

#endif
