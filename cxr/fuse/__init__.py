"""Fusion: the members and the meta-learner as ONE verified ensemble graph."""
