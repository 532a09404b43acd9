"""Code the services share: contracts, settings, Kafka and gRPC plumbing, errors, logging."""
