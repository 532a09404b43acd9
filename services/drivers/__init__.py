"""What drives the local stack without being part of production: the demo, `make up`, the evaluation and the
traffic they send; the benchmarks (benchmarks/) and the fault scenarios (chaos/) in their own packages. The stack
itself is services/localstack."""
