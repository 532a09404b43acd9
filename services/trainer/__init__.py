"""Builds, trains and exports the classification models into triton_models/."""
