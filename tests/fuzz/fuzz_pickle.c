/* fuzz_pickle.c: libFuzzer target for a pickle, run through all of the torch reader: the VM, then an
 * archive built around it with a record of the right size for every storage it names (so that most
 * pickles reach the graph walk), the walk, and the writer's round trip. */
#include <stdio.h>

#include "buffer.h"

/* A stored zip entry through the project's own zip writer. */
static void entry(memory_output *out, widen_zip_writer *zw, const char *name, const void *data, size_t len)
{
    unsigned char header[512], descriptor[24];
    size_t n = widen_zip_begin(zw, name, -1, header, sizeof header);
    memory_write(&out->base, header, n, NULL);
    widen_zip_data(zw, data, len);
    memory_write(&out->base, data, len, NULL);
    n = widen_zip_end(zw, descriptor);
    memory_write(&out->base, descriptor, n, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pk_arena *arena = NULL;
    pk_node *root = NULL;
    widen_error err;
    if (pk_load(data, size, "fuzz", &arena, &root, NULL, &err) != WIDEN_OK) return 0;
    if (pk_check_graph(arena, root, 1000, "fuzz", &err) == WIDEN_OK) { /* the writer alone, read again */
        pk_buffer out = {0};
        if (pk_dump(arena, root, NULL, NULL, &out, &err) != WIDEN_OK) abort();
        pk_arena *again = NULL;
        pk_node *root2 = NULL;
        if (pk_load(out.data, out.len, "fuzz-again", &again, &root2, NULL, &err) != WIDEN_OK) abort();
        pk_arena_free(again);
        free(out.data);
    }
    /* the archive: data.pkl, then data/<key> of numel x element size for each persistent id */
    memory_output zip = {.base = {.write = memory_write}};
    widen_zip_writer zw = {.alignment = 64};
    entry(&zip, &zw, "archive/data.pkl", data, size);
    entry(&zip, &zw, "archive/version", "3\n", 2);
    unsigned char *zeros = calloc(1, 1 << 16);
    char written[64][220];
    size_t count = 0;
    for (size_t id = 0; id < pk_arena_count(arena) && count < 64; id++) {
        const pk_node *n = pk_arena_node(arena, id);
        if (n->kind != PK_PERSID) continue;
        const pk_node *t = n->items[0];
        uint64_t bytes = (uint64_t)t->items[4]->i * pk_global_of(t->items[1])->size;
        if (t->items[2]->len > 200 || bytes > (1 << 16)) continue;
        snprintf(written[count], sizeof written[count], "archive/data/%.*s", (int)t->items[2]->len, t->items[2]->s);
        int again = 0;
        for (size_t k = 0; k < count && !again; k++) again = strcmp(written[k], written[count]) == 0;
        if (again) continue; /* the first reference decides the size, as in torch */
        entry(&zip, &zw, written[count++], zeros, (size_t)bytes);
    }
    unsigned char *tail = NULL;
    size_t len = 0;
    if (widen_zip_finish(&zw, &tail, &len, &err) == WIDEN_OK) memory_write(&zip.base, tail, len, NULL);
    free(tail);
    widen_zip_writer_free(&zw);
    free(zeros);
    pk_arena_free(arena);
    widen_checkpoint *c = buffer_checkpoint(zip.data, zip.len, "fuzz.pt", "pt");
    if (widen_torch_read(c, &err) == WIDEN_OK) {
        check_tensors_inside(c, zip.len);
        round_trip(c);
    }
    buffer_close(c);
    free(zip.data);
    return 0;
}
