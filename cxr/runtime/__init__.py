"""cxr.runtime."""
