"""Deployment: model repositories for Triton and KServe."""
