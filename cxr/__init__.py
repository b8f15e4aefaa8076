"""cxr: a stacking ensemble of chest X-ray classifiers, fused into one verified ONNX graph.

Decision support only: cxr never diagnoses. Every result it shows says so.
"""

__version__ = "0.1.0"
