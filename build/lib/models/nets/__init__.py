"""Networks built by name (built-in or timm), the weights-only model file, initial weights, tensors in."""
