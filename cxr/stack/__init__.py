"""Stacking: a scikit-learn meta-learner on member probabilities, and its ONNX form."""
