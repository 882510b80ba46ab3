"""Checkpoints, untrusted input: read safely into plain tensors and configs (the reader child does the unpickling).

- `read`: the entry point. `read_checkpoint` (a file, a folder, a zipped submission → `RawCheckpoint`),
  `find_weights`, the file's kind by its first bytes.
- `archive`: zip safety (member names, sizes, ratios) and `extract_zip`.
- `hf_folder`: Hugging Face model folders (config.json, shards) and safetensors headers.
- `runner`: starts the reader child under limits and checks its answer; `child`: the child itself.
- `pickle_policy`: which pickle globals are code, and the inert stubs for the others.
- `unwrap`: whatever a training script saved → one flat state dict, a config and metadata.
- `errors`, `limits`: `CheckpointError` and its codes; what reading may cost.
"""

# What a weights file is called. Here, not in `read`, so that discovery can use it without importing torch.
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
