"""Text models: the bag-of-n-grams MLP (networks), its model file, training and ONNX export."""
