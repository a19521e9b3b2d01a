// kernels_bench.cc: Google Benchmark harness for the widen kernels, each beside memcpy and a naive
// per-row memcpy+memset in the same run. Throughput counts bytes read + bytes written.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "widen/widen.h"

namespace {

struct Shape {
  const char *name;
  size_t rows, c, n, inner;  // [rows, c, inner] -> [rows, n, inner]
};

// Axis 1 of [64,3,512,512] -> 4, [20480,3,14,14] -> 4, last axis [16M,3] -> 4.
const Shape kShapes[] = {
    {"64x3x512x512", 64, 3, 4, 512 * 512},
    {"20480x3x14x14", 20480, 3, 4, 14 * 14},
    {"16Mx3", 16u << 20, 3, 4, 1},
};

struct Dt {
  const char *name;
  widen_dtype dtype;
  size_t size;
};
const Dt kDtypes[] = {{"F32", WIDEN_F32, 4}, {"F16", WIDEN_F16, 2}, {"BF16", WIDEN_BF16, 2}};

std::vector<unsigned char> Random(size_t n) {
  std::vector<unsigned char> v(n);
  unsigned x = 12345;
  for (auto &b : v) b = (unsigned char)((x = x * 1103515245u + 12345u) >> 16);
  return v;
}

void SetBytes(benchmark::State &state, size_t moved) {
  state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)moved);
}

void BM_Memcpy(benchmark::State &state, size_t out_bytes) {
  std::vector<unsigned char> src = Random(out_bytes), dst(out_bytes);
  for (auto _ : state) {
    memcpy(dst.data(), src.data(), out_bytes);
    benchmark::ClobberMemory();
  }
  SetBytes(state, 2 * out_bytes);
}

void BM_Naive(benchmark::State &state, Shape s, Dt d) {
  size_t in_bytes = s.rows * s.c * s.inner * d.size, run = s.inner * d.size;
  std::vector<unsigned char> src = Random(in_bytes), dst(s.rows * s.n * run);
  for (auto _ : state) {
    for (size_t r = 0; r < s.rows; r++) {
      memcpy(&dst[r * s.n * run], &src[r * s.c * run], s.c * run);
      memset(&dst[(r * s.n + s.c) * run], 0, (s.n - s.c) * run);
    }
    benchmark::ClobberMemory();
  }
  SetBytes(state, in_bytes + dst.size());
}

void BM_Remap(benchmark::State &state, widen_isa isa, Shape s, Dt d) {
  if (!widen_isa_usable(isa)) {
    state.SkipWithError("ISA not usable on this CPU");
    return;
  }
  size_t in_bytes = s.rows * s.c * s.inner * d.size, out_bytes = s.rows * s.n * s.inner * d.size;
  std::vector<unsigned char> src = Random(in_bytes), dst(out_bytes);
  std::vector<widen_map_entry> map(s.n);
  for (size_t i = 0; i < s.n; i++)
    map[i] = i < s.c ? widen_map_entry{WIDEN_MAP_SOURCE, (uint32_t)i, 0} : widen_map_entry{WIDEN_MAP_ZERO, 0, 0};
  widen_remap_job job{src.data(), dst.data(), d.dtype, d.dtype, s.rows, s.n, s.inner,
                      s.c * s.inner, s.inner, s.n * s.inner, s.inner, map.data(), WIDEN_STORE_AUTO};
  widen_error err;
  for (auto _ : state) {
    widen_remap(&job, isa, &err);
    benchmark::ClobberMemory();
  }
  SetBytes(state, in_bytes + out_bytes);
}

void BM_Cast(benchmark::State &state, widen_isa isa, Dt from, Dt to) {
  if (!widen_isa_usable(isa)) {
    state.SkipWithError("ISA not usable on this CPU");
    return;
  }
  const size_t n = 64u << 20;
  std::vector<unsigned char> src = Random(n * from.size), dst(n * to.size);
  widen_error err;
  for (auto _ : state) {
    widen_cast(from.dtype, to.dtype, src.data(), dst.data(), n, isa, &err);
    benchmark::ClobberMemory();
  }
  SetBytes(state, src.size() + dst.size());
}

int Register() {
  for (const Shape &s : kShapes) {
    for (const Dt &d : kDtypes) {
      std::string tag = std::string(s.name) + "/" + d.name;
      size_t out_bytes = s.rows * s.n * s.inner * d.size;
      benchmark::RegisterBenchmark(("memcpy/" + tag).c_str(), BM_Memcpy, out_bytes);
      benchmark::RegisterBenchmark(("naive/" + tag).c_str(), BM_Naive, s, d);
      for (int isa = 0; isa < WIDEN_ISA_COUNT; isa++)
        benchmark::RegisterBenchmark(("remap_" + std::string(widen_isa_name((widen_isa)isa)) + "/" + tag).c_str(),
                                     BM_Remap, (widen_isa)isa, s, d);
    }
  }
  for (const Dt &from : kDtypes)
    for (const Dt &to : kDtypes) {
      if (from.dtype == to.dtype) continue;
      std::string tag = std::string("64M/") + from.name + "_to_" + to.name;
      benchmark::RegisterBenchmark(("memcpy/" + tag).c_str(), BM_Memcpy, (size_t)(64u << 20) * to.size);
      for (int isa = 0; isa < WIDEN_ISA_COUNT; isa++)
        benchmark::RegisterBenchmark(("cast_" + std::string(widen_isa_name((widen_isa)isa)) + "/" + tag).c_str(),
                                     BM_Cast, (widen_isa)isa, from, to);
    }
  return 0;
}

const int registered = Register();

}  // namespace

BENCHMARK_MAIN();
