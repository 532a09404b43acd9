"""What `make bench-gpu` needs on a lent GPU machine: CUDA twins of the production models for the real tritonserver,
and the packing of what travels to that machine (carry.py)."""
