"""cxr-bench: time the fused model and its members on this machine (torch-free)."""
