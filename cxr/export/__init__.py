"""cxr.export."""
