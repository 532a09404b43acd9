"""The benchmarks: each `make bench*` command's module, what they share (pipeline_runs: one run of listings and
what it cost), and gpu_host/, what `make bench-gpu` needs on a lent GPU machine."""
