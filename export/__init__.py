"""Export: fixed-K, 1..N-target wrapper, ONNX (FP32/FP16/INT8 QDQ), TensorRT plan, bundle writing."""
