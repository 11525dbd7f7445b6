"""Export: ONNX files with metadata and parity checks, the speed benchmark, the machine it ran on, the model card."""
