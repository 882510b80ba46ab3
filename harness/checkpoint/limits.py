"""What reading one checkpoint may cost: memory, CPU and wall time, file and zip sizes.

Imports nothing heavy: the reader child imports it before it limits itself and before it imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What reading one checkpoint may cost. `memory_mb` is headroom above what the reader needs to
    import torch and safetensors (about 600 MB of address space for CPU torch 2.13; the child
    measures its own), so it is what the checkpoint itself may take."""

    memory_mb: int = 4096
    cpu_seconds: int = 120
    wall_seconds: int = 180
    max_file_mb: int = 2048
    max_zip_total_mb: int = 4096
    max_zip_members: int = 10000
    max_zip_ratio: float = 200.0


def tensor_budget(file_bytes: int, limits: Limits) -> int:
    """How many bytes of tensors a file of this size may unfold into: tied weights and views may repeat
    storage, but a tensor far larger than its file is a hostile shape (a stride-0 giant)."""
    return min(limits.memory_mb * MB, 4 * file_bytes + 64 * MB)
