"""Automatic prefix caching, as vLLM does it: full 16-token blocks keyed by chained hashes."""

from __future__ import annotations

from collections import OrderedDict

from simulator.textgen import BLOCK_SIZE


class PrefixCache:
    def __init__(self, max_blocks: int) -> None:
        self._max_blocks = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def peek(self, block_hashes: tuple[int, ...], num_tokens: int) -> int:
        """How many leading prompt tokens are cached, without touching the cache."""
        hits = 0
        for block in block_hashes:
            if block not in self._blocks:
                break
            hits += 1
        # At least one prompt token is always computed: the model needs a forward pass to
        # produce the first output token (vLLM caps the hit the same way).
        max_cached = ((num_tokens - 1) // BLOCK_SIZE) * BLOCK_SIZE
        return min(hits * BLOCK_SIZE, max(max_cached, 0))

    def admit(self, block_hashes: tuple[int, ...], num_tokens: int) -> int:
        """Return the cached prefix length, then remember this prompt's blocks as most recent."""
        cached = self.peek(block_hashes, num_tokens)
        blocks = self._blocks
        for block in block_hashes:
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = None
        while len(blocks) > self._max_blocks:
            blocks.popitem(last=False)
        return cached
