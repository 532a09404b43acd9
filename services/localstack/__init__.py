"""The local stack: the production topology on one machine (tansu for Kafka, Triton on CPU, the three services)."""
