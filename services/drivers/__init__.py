"""What drives the local stack without being part of production: the demo, the evaluation, `make up`, the
benchmarks, the fault scenarios and the traffic they send. The stack itself is services/localstack."""
