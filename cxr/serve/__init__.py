"""cxr.serve."""
