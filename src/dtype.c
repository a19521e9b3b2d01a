/* dtype.c: the safetensors element types: names, sizes, and the reference writer's ordering. */
#include <string.h>

#include "dtype.h"

static const struct {
    const char *name;
    unsigned bits;
    int is_float;
    int rank; /* position in safetensors' Dtype enum, whose order the writer sorts by */
} dtypes[WIDEN_DTYPE_COUNT] = {
    [WIDEN_BOOL] = {"BOOL", 8, 0, 0},
    [WIDEN_F4] = {"F4", 4, 1, 1},
    [WIDEN_F6_E2M3] = {"F6_E2M3", 6, 1, 2},
    [WIDEN_F6_E3M2] = {"F6_E3M2", 6, 1, 3},
    [WIDEN_U8] = {"U8", 8, 0, 4},
    [WIDEN_I8] = {"I8", 8, 0, 5},
    [WIDEN_F8_E5M2] = {"F8_E5M2", 8, 1, 6},
    [WIDEN_F8_E4M3] = {"F8_E4M3", 8, 1, 7},
    [WIDEN_F8_E8M0] = {"F8_E8M0", 8, 1, 8},
    [WIDEN_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, 1, 9},
    [WIDEN_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, 1, 10},
    [WIDEN_I16] = {"I16", 16, 0, 11},
    [WIDEN_U16] = {"U16", 16, 0, 12},
    [WIDEN_F16] = {"F16", 16, 1, 13},
    [WIDEN_BF16] = {"BF16", 16, 1, 14},
    [WIDEN_I32] = {"I32", 32, 0, 15},
    [WIDEN_U32] = {"U32", 32, 0, 16},
    [WIDEN_F32] = {"F32", 32, 1, 17},
    [WIDEN_C64] = {"C64", 64, 0, 18},
    [WIDEN_F64] = {"F64", 64, 1, 19},
    [WIDEN_I64] = {"I64", 64, 0, 20},
    [WIDEN_U64] = {"U64", 64, 0, 21},
};

const char *widen_dtype_name(widen_dtype dtype)
{
    return (unsigned)dtype < WIDEN_DTYPE_COUNT ? dtypes[dtype].name : NULL;
}

int widen_dtype_from_name(const char *name, widen_dtype *dtype)
{
    if (!name || !dtype) return -1;
    for (unsigned i = 0; i < WIDEN_DTYPE_COUNT; i++) {
        if (strcmp(name, dtypes[i].name) == 0) {
            *dtype = (widen_dtype)i;
            return 0;
        }
    }
    return -1;
}

unsigned widen_dtype_bits(widen_dtype dtype)
{
    return (unsigned)dtype < WIDEN_DTYPE_COUNT ? dtypes[dtype].bits : 0;
}

int widen_dtype_is_computable(widen_dtype dtype)
{
    return dtype == WIDEN_F32 || dtype == WIDEN_F16 || dtype == WIDEN_BF16;
}

int widen_dtype_is_float(widen_dtype dtype)
{
    return (unsigned)dtype < WIDEN_DTYPE_COUNT && dtypes[dtype].is_float;
}

int widen_dtype_write_rank(widen_dtype dtype)
{
    return dtypes[dtype].rank;
}
