"""The operators' review console: a web app over the result service's gRPC API (no database of its own)."""
