/* torch_legacy.c: legacy torch.save files (torch < 1.6, or _use_new_zipfile_serialization=False), as
 * torch's _legacy_load reads them: five pickles in a row (the magic number, the protocol version
 * 1001, a sys_info dict, the object, the list of storage keys), then each storage of that list, in its
 * order, as an i64 little-endian element count and the raw bytes. Every pickle goes through the same
 * restricted VM as a zip checkpoint's data.pkl; the storages are listed as the records of a zip would
 * be, so that everything after reading (the tensors, writing, verifying) is the zip checkpoint's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"
#include "torch.h"

#define BAD(...) widen_fail(err, WIDEN_EFORMAT, __VA_ARGS__)
#define NOMEM() widen_fail(err, WIDEN_EIO, "out of memory")
#define SHOWN(len) (int)((len) > 200 ? 200 : (len))

/* The magic number's LONG1 payload: 0x1950a86a20f9469cfc6c, little-endian. */
static const unsigned char magic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

static int py_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); /* str.strip() and int() */
}

/* tarfile's nti: a numeric field as Python 3.11 reads it. Base-256 when its first byte is 0x80 or 0xff
 * (big-endian, the latter negative); otherwise the ASCII text up to its first NUL, through int(text or
 * "0", 8) after strip(): a sign, an optional 0o prefix, octal digits with single underscores between
 * them (and after the prefix). 0 where tarfile finds the field invalid; *value saturates where it
 * could only compare unequal to a block's checksum. */
static int tar_number(const unsigned char *p, int off, int len, long *value)
{
    *value = 0;
    if (p[off] == 0x80 || p[off] == 0xff) {
        long n = 0;
        for (int i = 1; i < len; i++) n = n > (1L << 40) ? n : (n << 8) + p[off + i];
        *value = p[off] == 0xff ? (n > (1L << 40) ? -(1L << 41) : n - (1L << (8 * (len - 1) > 40 ? 40 : 8 * (len - 1)))) : n;
        if (p[off] == 0xff && 8 * (len - 1) > 40) *value = -(1L << 41); /* below any checksum */
        return 1;
    }
    int end = off;
    while (end < off + len && p[end]) end++;
    for (int i = off; i < end; i++)
        if (p[i] >= 0x80) return 0; /* not ASCII: nts fails */
    int a = off, b = end;
    while (a < b && py_space(p[a])) a++;
    while (b > a && py_space(p[b - 1])) b--;
    if (a == b) return 1; /* "" is read as "0" */
    int negative = 0;
    if (p[a] == '+' || p[a] == '-') negative = p[a++] == '-';
    int underscore_ok = 0;
    if (b - a >= 2 && p[a] == '0' && (p[a + 1] == 'o' || p[a + 1] == 'O')) a += 2, underscore_ok = 1;
    int digits = 0;
    long n = 0;
    for (int i = a; i < b; i++) {
        if (p[i] == '_') {
            if (!underscore_ok) return 0;
            underscore_ok = 0;
            continue;
        }
        if (p[i] < '0' || p[i] > '7') return 0;
        n = n > (1L << 40) ? n : n * 8 + (p[i] - '0');
        digits++;
        underscore_ok = 1;
    }
    if (!digits || (b > a && p[b - 1] == '_')) return 0;
    *value = negative ? -n : n;
    return 1;
}

/* torch.load tries the tar-era format first: a first block that Python's tarfile reads as a header
 * (its numeric fields valid, its checksum field holding the block's checksum, of unsigned or signed
 * bytes, the field itself counted as spaces) would be read as one. Such a file is refused, not read
 * as a pickle. */
static int reads_as_tar(const unsigned char *p, uint64_t size)
{
    if (size < 512) return 0;
    int all_zero = 1;
    for (int i = 0; i < 512 && all_zero; i++) all_zero = !p[i];
    if (all_zero) return 0;
    static const int fields[][2] = {{100, 8}, {108, 8}, {116, 8}, {124, 12}, {136, 12}, {329, 8}, {337, 8}};
    long value;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
        if (!tar_number(p, fields[f][0], fields[f][1], &value)) return 0;
    if (!tar_number(p, 148, 8, &value)) return 0;
    long sum = 0, ssum = 0;
    for (int i = 0; i < 512; i++) {
        unsigned char b = i >= 148 && i < 156 ? ' ' : p[i];
        sum += b;
        ssum += (signed char)b;
    }
    return value == sum || value == ssum;
}

/* One of the five pickles at *pos: loaded, *pos moved past its STOP (pk_load refuses a FRAME that
 * runs past it: where torch's next read starts would depend on its buffering). Only the object pickle
 * may name storages: torch loads the other four with plain pickle.load, which has no persistent_load
 * and fails on a BINPERSID. */
static widen_status load_one(widen_checkpoint *c, uint64_t *pos, const char *what, int object, pk_arena **arena,
                             pk_node **root, widen_error *err)
{
    size_t used = 0;
    widen_status st = pk_load(c->map + *pos, (size_t)(c->size - *pos), what, arena, root, &used, err);
    if (st) return st;
    *pos += used;
    for (size_t id = 0, n = pk_arena_count(*arena); !object && id < n; id++)
        if (pk_arena_node(*arena, id)->kind == PK_PERSID) {
            pk_arena_free(*arena);
            *arena = NULL;
            return BAD("%s: a persistent id (torch.load reads this pickle without persistent_load, and fails)", what);
        }
    return WIDEN_OK;
}

/* Where the storages lie: after the key list, each key's count and bytes. The element size and count
 * of each key come from the first persistent id that names it, as in torch (register_storages then
 * checks every other against it). */
static widen_status lay_out(widen_checkpoint *c, torch_state *ts, pk_node *keys, uint64_t pos, widen_error *err)
{
    widen_table first = {0}; /* root key -> its first persistent id's node id */
    size_t nodes = pk_arena_count(ts->arena), views = 0;
    widen_status st = WIDEN_OK;
    for (size_t id = 0; id < nodes && !st; id++) {
        const pk_node *n = pk_arena_node(ts->arena, id);
        if (n->kind != PK_PERSID) continue;
        const pk_node *t = n->items[0];
        views += t->count == 6 && t->items[5]->kind != PK_NONE;
        if (widen_table_put(&first, t->items[2]->s, t->items[2]->len, id, NULL) < 0) st = NOMEM();
    }
    if (!st && !(ts->zip.entries = calloc(keys->count + views + 1, sizeof *ts->zip.entries))) st = NOMEM();
    for (uint32_t k = 0; k < keys->count && !st; k++) {
        const pk_node *key = keys->items[k];
        size_t id, dup;
        if (!widen_table_get(&first, key->s, key->len, &id)) {
            st = BAD("%s: the list of storages names '%.*s', which no persistent id names (torch.load fails on it)",
                     c->path, SHOWN(key->len), key->s);
            break;
        }
        int r = widen_table_put(&ts->legacy_keys, key->s, key->len, ts->zip.count, &dup);
        if (r <= 0) {
            st = r < 0 ? NOMEM() : BAD("%s: the list of storages names '%.*s' twice", c->path, SHOWN(key->len), key->s);
            break;
        }
        const pk_node *t = pk_arena_node(ts->arena, id)->items[0];
        const pk_global_info *g = pk_global_of(t->items[1]);
        uint64_t numel = (uint64_t)t->items[4]->i, bytes;
        if (c->size - pos < 8) {
            st = BAD("%s: the file ends before storage '%.*s' (a truncated file)", c->path, SHOWN(key->len), key->s);
            break;
        }
        uint64_t count = 0;
        for (int i = 7; i >= 0; i--) count = count << 8 | c->map[pos + (uint64_t)i];
        if (count != numel) {
            st = BAD("%s: storage '%.*s' holds %lld elements where its persistent id says %llu (torch.load checks the size)",
                     c->path, SHOWN(key->len), key->s, (long long)count, (unsigned long long)numel);
            break;
        }
        if (!g->size || __builtin_mul_overflow(numel, (uint64_t)g->size, &bytes) || bytes > c->size - pos - 8) {
            st = BAD("%s: storage '%.*s' (%llu elements of torch.%s) reaches past the end of the file (a truncated file)",
                     c->path, SHOWN(key->len), key->s, (unsigned long long)numel, g->name);
            break;
        }
        widen_zip_entry *e = &ts->zip.entries[ts->zip.count];
        if (!(e->name = strndup(key->s, key->len))) {
            st = NOMEM();
            break;
        }
        e->header_offset = pos;
        e->crc = (uint32_t)(g - pk_globals); /* a legacy entry's CRC field holds its storage class */
        e->data_offset = pos + 8;
        e->size = bytes;
        ts->zip.count++;
        pos += 8 + bytes;
    }
    widen_table_free(&first);
    if (!st && pos != c->size)
        st = BAD("%s: %llu bytes follow the last storage of a legacy torch file (a damaged or concatenated file)", c->path,
                 (unsigned long long)(c->size - pos));
    return st;
}

widen_status widen_torch_legacy_read(widen_checkpoint *c, widen_error *err)
{
    torch_state *ts = calloc(1, sizeof *ts);
    if (!ts) return NOMEM();
    c->format_state = ts;
    c->format_free = widen_torch_free;
    ts->legacy = 1;
    if (!(ts->prefix = strdup(""))) return NOMEM();
    if (reads_as_tar(c->map, c->size))
        return BAD("%s: a legacy torch file whose first block also reads as a tar archive, which torch.load would read "
                   "instead", c->path);
    uint64_t pos = 0;
    char what[600];
    pk_arena *arena = NULL;
    pk_node *root = NULL;
    widen_status st;
    /* (1) the magic number */
    snprintf(what, sizeof what, "%s: the legacy file's magic number", c->path);
    if ((st = load_one(c, &pos, what, 0, &arena, &root, err))) return st;
    int ok = root->kind == PK_BIGINT && root->len == sizeof magic && memcmp(root->s, magic, sizeof magic) == 0;
    pk_arena_free(arena);
    if (!ok) return BAD("%s: invalid magic number of a legacy torch file (torch.load: corrupt file?)", c->path);
    /* (2) the protocol version */
    snprintf(what, sizeof what, "%s: the legacy file's protocol version", c->path);
    if ((st = load_one(c, &pos, what, 0, &arena, &root, err))) return st;
    ok = root->kind == PK_INT && root->i == 1001;
    pk_arena_free(arena);
    if (!ok) return BAD("%s: the legacy file's protocol version is not 1001, the one torch.load reads", c->path);
    /* (3) sys_info: torch loads it (through the same unpickler) and does not look at it */
    snprintf(what, sizeof what, "%s: the legacy file's sys_info", c->path);
    if ((st = load_one(c, &pos, what, 0, &arena, &root, err))) return st;
    pk_arena_free(arena);
    /* (4) the object */
    snprintf(what, sizeof what, "%s: the legacy file's object pickle", c->path);
    if ((st = load_one(c, &pos, what, 1, &ts->arena, &ts->root, err))) return st;
    /* (5) the storage keys */
    snprintf(what, sizeof what, "%s: the legacy file's list of storages", c->path);
    if ((st = load_one(c, &pos, what, 0, &arena, &root, err))) return st;
    ok = root->kind == PK_LIST;
    for (uint32_t k = 0; ok && k < root->count; k++)
        ok = root->items[k]->kind == PK_STR && root->items[k]->len && !memchr(root->items[k]->s, '\0', root->items[k]->len);
    if (!ok) {
        pk_arena_free(arena);
        return BAD("%s: the legacy file's list of storages is not a list of keys", c->path);
    }
    st = lay_out(c, ts, root, pos, err); /* the keys point into the file: they outlive this arena */
    pk_arena_free(arena);
    if (st) return st;
    snprintf(what, sizeof what, "%s: the legacy file's object pickle", c->path);
    return widen_torch_read_graph(c, ts, what, err);
}
