"""Grading: one submission measured (measure), a class batched (batch, backends), findings and the rubric."""
