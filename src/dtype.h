/* dtype.h: dtype facts the public header does not expose. */
#ifndef WIDEN_DTYPE_H
#define WIDEN_DTYPE_H

#include "widen/widen.h"

/* Order of the safetensors reference writer: tensors sorted by this, descending, then by name. */
int widen_dtype_write_rank(widen_dtype dtype);

#endif
