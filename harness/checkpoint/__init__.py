"""Checkpoints, untrusted input: read safely into plain tensors and configs (the reader child does the unpickling)."""
