"""Deterministic embedding vectors: a unit vector seeded by the input's fingerprint."""

from __future__ import annotations

import base64
import math
import random
import struct

from simulator.textgen import Prompt


def embed(prompt: Prompt, dim: int) -> list[float]:
    rng = random.Random(prompt.key)
    # Gaussian components make the direction uniform on the sphere, like real embeddings.
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(math.fsum(x * x for x in vector)) or 1.0
    # Rounding through float32 keeps the float and base64 encodings of one input identical.
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(x / norm for x in vector))))


def to_base64(vector: list[float]) -> str:
    """float32 little-endian, base64: what the OpenAI SDK asks for by default."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
