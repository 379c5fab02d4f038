"""I/O shell: entropy handed to cores (they never import ``secrets`` or ``random``)."""

from __future__ import annotations

import os
import random
from typing import Protocol


class Entropy(Protocol):
    def token_bytes(self, n: int) -> bytes: ...


class SystemEntropy:
    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)


class SeededEntropy:
    """Reproducible entropy for the simulator and tests (never for real secrets)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._random.randbytes(n)
