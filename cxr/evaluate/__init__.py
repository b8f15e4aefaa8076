"""Evaluation of members, voting and stacking on the test split (numpy, onnxruntime and matplotlib only).

``cxr.evaluate.evaluate.evaluate(EvalConfig) -> EvalResult`` is the stage; ``metrics``, ``calibration``,
``stats`` and ``voting`` are the plain functions it is built from.
"""
