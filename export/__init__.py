"""Export side of edge-infer (needs torch and onnx): checkpoint -> checked fp32/int8 ONNX models."""
