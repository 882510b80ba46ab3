"""harness: a reproducible grading harness for courses that train small transformer language models."""

__version__ = "0.1.0"
