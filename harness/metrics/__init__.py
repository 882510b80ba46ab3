"""Metrics: the evaluation protocols (clm-v1, mlm-v1) on the course's fixed data, and the causality check."""
