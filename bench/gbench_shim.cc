// gbench_shim.cc: widen-bench's only C++: registers widen_bench.c's benchmarks with Google Benchmark,
// runs them with its runner and flags, and hands each repetition's rate back to C.
#include "gbench_shim.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {

int progress = 0;  // name each benchmark on stderr as it starts (random interleaving reports at the end)

void Run(benchmark::State &state, wb_benchmark *b) {
  if (progress) fprintf(stderr, "\rrunning %s\x1b[K", b->name);
  void *s = b->prepare(b->arg, !b->checked);
  if (!s) {
    b->failed = 1;
    snprintf(b->error, sizeof b->error, "%s: setup failed (XNNPACK refused the job)", b->name);
    state.SkipWithError(b->error);
    return;
  }
  for (auto _ : state) {
    b->run(s);
    benchmark::ClobberMemory();
  }
  // The output is checked once per benchmark, after its first timed loop, outside the timing.
  if (!b->checked) {
    b->checked = 1;
    if (b->check && b->check(s, b->error, sizeof b->error)) {
      b->failed = 1;
      state.SkipWithError(b->error);
    }
  }
  b->release(s);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(b->bytes_moved));
}

// Collects the rates of every run, and passes every call on to the reporter Google Benchmark would
// use on its own where widen-bench is asked for Google Benchmark's output (--benchmark_format).
class Collector : public benchmark::BenchmarkReporter {
 public:
  Collector(std::map<std::string, wb_benchmark *> by_name, benchmark::BenchmarkReporter *inner, wb_context *context)
      : by_name_(std::move(by_name)), inner_(inner), context_(context) {}

  bool ReportContext(const Context &c) override {
    context_->num_cpus = c.cpu_info.num_cpus;
    context_->mhz_per_cpu = c.cpu_info.cycles_per_second / 1e6;
    const std::vector<double> &load = c.cpu_info.load_avg;
    for (size_t i = 0; i < load.size() && i < 3; i++) context_->load_avg[i] = load[i];
    context_->have_load_avg = load.size() >= 3;
    return inner_ ? inner_->ReportContext(c) : true;
  }

  void ReportRuns(const std::vector<Run> &runs) override {
    for (const Run &r : runs) {
      auto it = by_name_.find(r.run_name.function_name);
      if (it == by_name_.end()) continue;
      wb_benchmark *b = it->second;
      if (r.error_occurred) continue;
      auto rate = r.counters.find("bytes_per_second");
      if (rate == r.counters.end()) continue;
      if (r.run_type == Run::RT_Iteration) {
        if (b->repetitions < WB_MAX_REPETITIONS) b->rates[b->repetitions++] = rate->second.value;
      } else if (r.aggregate_name == "median") {
        b->aggregate_median = rate->second.value;
        b->aggregate_repetitions = static_cast<size_t>(r.repetitions);
        b->have_aggregates = 1;
      } else if (r.aggregate_name == "cv") {
        b->aggregate_cv = rate->second.value;
      }
    }
    if (inner_) inner_->ReportRuns(runs);
  }

  void Finalize() override {
    if (progress) fprintf(stderr, "\r\x1b[K");
    if (inner_) inner_->Finalize();
  }

 private:
  std::map<std::string, wb_benchmark *> by_name_;
  benchmark::BenchmarkReporter *inner_;
  wb_context *context_;
};

}  // namespace

extern "C" void wb_gbench_initialize(int *argc, char **argv) { benchmark::Initialize(argc, argv); }

extern "C" size_t wb_gbench_run(wb_benchmark *benchmarks, size_t count, int pass_through, int show_progress,
                                wb_context *context) {
  progress = show_progress;
  std::map<std::string, wb_benchmark *> by_name;
  for (size_t i = 0; i < count; i++) {
    wb_benchmark *b = &benchmarks[i];
    by_name[b->name] = b;
    // Wall time: the work may be split over threads of widen-bench's own, which CPU time would miss.
    benchmark::RegisterBenchmark(b->name, Run, b)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  // Google Benchmark owns the reporter it creates (a function-local static): not deleted here.
  benchmark::BenchmarkReporter *inner = pass_through ? benchmark::CreateDefaultDisplayReporter() : nullptr;
  Collector collector(by_name, inner, context);
  size_t ran = benchmark::RunSpecifiedBenchmarks(&collector);
  benchmark::ClearRegisteredBenchmarks();
  return ran;
}
