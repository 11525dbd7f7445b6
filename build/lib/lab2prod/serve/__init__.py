"""Serving and prediction with ONNX Runtime, no torch: the HTTP app, micro-batching, hot reload, metrics,
the prediction log, and `lab2prod predict`."""
