"""Preprocessing service: image bytes to tensors to both models' outputs (the platform's only Triton client)."""
