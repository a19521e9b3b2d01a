// kernels_bench.cc: Google Benchmark harness for the widen kernels. Every kernel runs on every ISA
// (skipped where the CPU lacks it) beside its peers in the same process: memcpy of the output, a
// naive per-row memcpy + memset, and XNNPACK's constant pad. Throughput is bytes read + bytes
// written per second, so a pad, a down-cast and memcpy compare directly. bench/kernel_table.py turns
// the JSON output into the README's table of ratios to memcpy.
#include <benchmark/benchmark.h>
#include <xnnpack.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "widen/widen.h"

namespace {

struct Shape {
  const char *name;
  size_t rows, c, n, inner;  // [rows, c, inner] -> [rows, n, inner], new channels zero
};

const Shape kShapes[] = {
    {"64x3x512x512_axis1", 64, 3, 4, 512 * 512},
    {"20480x3x14x14_axis1", 20480, 3, 4, 14 * 14},
    {"16Mx3_last", 16u << 20, 3, 4, 1},
};

struct Dt {
  const char *name;
  widen_dtype dtype;
  size_t size;
};
const Dt kDtypes[] = {{"F32", WIDEN_F32, 4}, {"F16", WIDEN_F16, 2}, {"BF16", WIDEN_BF16, 2}};
const size_t kCastElements = 64u << 20;

// Buffers are allocated and touched once per benchmark, outside the timed loop. The output starts a
// few cache lines off the input's page offset, as unrelated buffers do, so that loads and stores do
// not alias in the 4 KiB store-forwarding check when both sides advance at the same rate.
const size_t kDstOffset = 5 * 64;
struct Buffers {
  unsigned char *src, *dst, *base;
  size_t in_bytes, out_bytes;
  Buffers(size_t in, size_t out) : in_bytes(in), out_bytes(out) {
    src = static_cast<unsigned char *>(aligned_alloc(64, in + 64));
    base = static_cast<unsigned char *>(aligned_alloc(64, out + 4096));
    dst = base + kDstOffset;
    unsigned x = 12345;
    for (size_t i = 0; i < in; i++) src[i] = (unsigned char)((x = x * 1103515245u + 12345u) >> 16);
    memset(dst, 0, out);
  }
  ~Buffers() {
    free(src);
    free(base);
  }
};

void Report(benchmark::State &state, size_t moved) {
  state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)moved);
}

void BM_Memcpy(benchmark::State &state, size_t out_bytes) {
  Buffers b(out_bytes, out_bytes);
  for (auto _ : state) {
    memcpy(b.dst, b.src, out_bytes);
    benchmark::ClobberMemory();
  }
  Report(state, 2 * out_bytes);
}

void BM_Naive(benchmark::State &state, Shape s, Dt d) {
  size_t run = s.inner * d.size;
  Buffers b(s.rows * s.c * run, s.rows * s.n * run);
  for (auto _ : state) {
    for (size_t r = 0; r < s.rows; r++) {
      memcpy(b.dst + r * s.n * run, b.src + r * s.c * run, s.c * run);
      memset(b.dst + (r * s.n + s.c) * run, 0, (s.n - s.c) * run);
    }
    benchmark::ClobberMemory();
  }
  Report(state, b.in_bytes + b.out_bytes);
}

void BM_Xnnpack(benchmark::State &state, Shape s, Dt d) {
  Buffers b(s.rows * s.c * s.inner * d.size, s.rows * s.n * s.inner * d.size);
  const uint32_t zero = 0;
  xnn_operator_t op = nullptr;
  size_t shape[3] = {s.rows, s.c, s.inner}, pre[3] = {0, 0, 0}, post[3] = {0, s.n - s.c, 0};
  xnn_status st = d.size == 4 ? xnn_create_constant_pad_nd_x32(&zero, 0, &op)
                              : xnn_create_constant_pad_nd_x16(&zero, 0, &op);
  if (st == xnn_status_success)
    st = d.size == 4 ? xnn_setup_constant_pad_nd_x32(op, 3, shape, pre, post, b.src, b.dst, nullptr)
                     : xnn_setup_constant_pad_nd_x16(op, 3, shape, pre, post, b.src, b.dst, nullptr);
  if (st != xnn_status_success) {
    state.SkipWithError("XNNPACK constant pad failed");
    if (op) xnn_delete_operator(op);
    return;
  }
  for (auto _ : state) {
    xnn_run_operator(op, nullptr);
    benchmark::ClobberMemory();
  }
  xnn_delete_operator(op);
  Report(state, b.in_bytes + b.out_bytes);
}

void BM_Remap(benchmark::State &state, widen_isa isa, widen_store store, Shape s, Dt d) {
  Buffers b(s.rows * s.c * s.inner * d.size, s.rows * s.n * s.inner * d.size);
  std::vector<widen_map_entry> map(s.n);
  for (size_t i = 0; i < s.n; i++)
    map[i] = i < s.c ? widen_map_entry{WIDEN_MAP_SOURCE, (uint32_t)i, 0, 0} : widen_map_entry{WIDEN_MAP_ZERO, 0, 0, 0};
  widen_remap_job job{b.src, b.dst, d.dtype, d.dtype, s.rows, s.n, s.inner,
                      s.c * s.inner, s.inner, s.n * s.inner, s.inner, map.data(), store, s.c, 0};
  widen_error err;
  for (auto _ : state) {
    widen_remap(&job, isa, &err);
    benchmark::ClobberMemory();
  }
  Report(state, b.in_bytes + b.out_bytes);
}

void BM_Cast(benchmark::State &state, widen_isa isa, widen_store store, Dt from, Dt to) {
  Buffers b(kCastElements * from.size, kCastElements * to.size);
  widen_map_entry identity{WIDEN_MAP_SOURCE, 0, 0, 0};
  widen_remap_job job{b.src, b.dst, from.dtype, to.dtype, 1, 1, kCastElements, kCastElements, kCastElements,
                      kCastElements, kCastElements, &identity, store, 1, 0};
  widen_error err;
  for (auto _ : state) {
    widen_remap(&job, isa, &err);
    benchmark::ClobberMemory();
  }
  Report(state, b.in_bytes + b.out_bytes);
}

std::string Isa(int isa) { return widen_isa_name((widen_isa)isa); }

int Register() {
  xnn_initialize(nullptr);
  for (const Shape &s : kShapes) {
    for (const Dt &d : kDtypes) {
      std::string tag = std::string(s.name) + "/" + d.name;
      benchmark::RegisterBenchmark(("memcpy/" + tag).c_str(), BM_Memcpy, s.rows * s.n * s.inner * d.size);
      benchmark::RegisterBenchmark(("naive/" + tag).c_str(), BM_Naive, s, d);
      benchmark::RegisterBenchmark(("xnnpack/" + tag).c_str(), BM_Xnnpack, s, d);
      for (int isa = 0; isa < WIDEN_ISA_COUNT; isa++) {
        if (!widen_isa_usable((widen_isa)isa)) continue;  // skip what this CPU lacks
        benchmark::RegisterBenchmark(("widen_" + Isa(isa) + "_cached/" + tag).c_str(), BM_Remap, (widen_isa)isa,
                                     WIDEN_STORE_CACHED, s, d);
        if (isa != WIDEN_ISA_SCALAR)
          benchmark::RegisterBenchmark(("widen_" + Isa(isa) + "_stream/" + tag).c_str(), BM_Remap, (widen_isa)isa,
                                       WIDEN_STORE_STREAM, s, d);
      }
    }
  }
  for (const Dt &from : kDtypes)
    for (const Dt &to : kDtypes) {
      if (from.dtype == to.dtype) continue;
      std::string tag = std::string("cast64M/") + from.name + "_to_" + to.name;
      benchmark::RegisterBenchmark(("memcpy/" + tag).c_str(), BM_Memcpy, kCastElements * to.size);
      for (int isa = 0; isa < WIDEN_ISA_COUNT; isa++) {
        if (!widen_isa_usable((widen_isa)isa)) continue;
        benchmark::RegisterBenchmark(("widen_" + Isa(isa) + "_cached/" + tag).c_str(), BM_Cast, (widen_isa)isa,
                                     WIDEN_STORE_CACHED, from, to);
        if (isa != WIDEN_ISA_SCALAR)
          benchmark::RegisterBenchmark(("widen_" + Isa(isa) + "_stream/" + tag).c_str(), BM_Cast, (widen_isa)isa,
                                       WIDEN_STORE_STREAM, from, to);
      }
    }
  return 0;
}

const int registered = Register();

}  // namespace

BENCHMARK_MAIN();
