"""Export: fixed-K/N wrapper, ONNX (FP32/FP16/INT8 QDQ), TensorRT plan, bundle writing."""
