"""Export: each trained member to ONNX with cxr metadata, verified against PyTorch, with FP16/INT8 variants."""
