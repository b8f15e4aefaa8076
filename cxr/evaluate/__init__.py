"""Evaluation of members, voting and stacking on the test split (numpy, onnxruntime and matplotlib only).

``cxr.evaluate.evaluate.evaluate(EvalConfig) -> EvalResult`` is the stage; ``metrics``, ``calibration``,
``stats``, ``voting`` and ``calibration_check`` (stacking before/after its temperature, operating points with
Wilson intervals: scipy where installed, else the closed form) are the plain functions it is built from.
"""
