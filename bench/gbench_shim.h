/* gbench_shim.h: what widen-bench's C side (widen_bench.c) and its Google Benchmark runner
 * (gbench_shim.cc) share: a list of benchmarks, each a C function run per iteration, and the
 * per-repetition rates the runner hands back. */
#ifndef WIDEN_BENCH_GBENCH_SHIM_H
#define WIDEN_BENCH_GBENCH_SHIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WB_MAX_REPETITIONS 1000

/* One benchmark: Google Benchmark calls `prepare` (the buffers set up, untimed; `first` before the
 * call whose output is checked), then `run` once per iteration (timed, wall clock), then `check` once
 * per benchmark (untimed: 0 if the output is right, else a message in `error`), then `release`. */
typedef struct wb_benchmark {
    const char *name;                /* Google Benchmark's name: "<contender>/<case>" */
    void *arg;
    void *(*prepare)(void *arg, int first); /* the state run/check/release get; NULL: it failed */
    void (*run)(void *state);
    int (*check)(void *state, char *error, size_t size);
    void (*release)(void *state);
    double bytes_moved;              /* per iteration: bytes read + bytes written */

    /* Filled by wb_gbench_run. */
    size_t repetitions;              /* rates[] entries: one per repetition (from the iteration runs) */
    double rates[WB_MAX_REPETITIONS];/* bytes_moved per second of wall time */
    double aggregate_median, aggregate_cv; /* Google Benchmark's own aggregates, where it reported only those */
    size_t aggregate_repetitions;    /* ... and over how many repetitions */
    int have_aggregates;
    int checked;                     /* check ran */
    int failed;                      /* check or prepare failed: error says why */
    char error[256];
} wb_benchmark;

typedef struct wb_context {
    int num_cpus;
    double mhz_per_cpu;
    double load_avg[3];
    int have_load_avg;
} wb_context;

/* Passes argv through Google Benchmark's flag parser (benchmark::Initialize), which removes the
 * --benchmark_* flags it knows and leaves the rest in argv. */
void wb_gbench_initialize(int *argc, char **argv);

/* Registers the benchmarks, runs them (honouring --benchmark_filter, _repetitions, _out, ...) and
 * fills each one's results. pass_through: Google Benchmark's display reporter (the one
 * --benchmark_format chooses) prints to stdout as it would on its own; else nothing is printed and
 * progress, when set, names the benchmark running on one line of stderr (erased at the end). Returns
 * how many benchmarks ran. */
size_t wb_gbench_run(wb_benchmark *benchmarks, size_t count, int pass_through, int progress, wb_context *context);

#ifdef __cplusplus
}
#endif

#endif
