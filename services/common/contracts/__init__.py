"""Python code generated from proto/ by `make contracts` (never edited by hand).

Import messages from `services.common.contracts.product_classification.v1`.
"""
