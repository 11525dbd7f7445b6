"""Compression: structured and unstructured pruning, INT8 quantization, and the gate every variant passes."""
