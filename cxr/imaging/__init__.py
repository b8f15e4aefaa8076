"""Image decoding and preprocessing shared by training and the runtime (numpy, Pillow, pydicom only)."""

from cxr.imaging.decode import DecodeLimits, decode_gray, pixel_hash
from cxr.imaging.preprocess import normalize, resize_gray, to_model_input

__all__ = ["DecodeLimits", "decode_gray", "pixel_hash", "normalize", "resize_gray", "to_model_input"]
