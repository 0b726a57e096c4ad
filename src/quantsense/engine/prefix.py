"""Prefix reuse: when blocks 0..s-1 are FP32, their outputs equal the reference run's, so replay them.

During the reference (FP32) pass a forward hook stores each block's output per batch. To evaluate a
plan whose first quantized block is ``s``, blocks ``0..s-1`` have their ``forward`` replaced by a
function that returns the stored output of block ``s-1`` for the current batch without computing
anything; block ``s`` then receives exactly the FP32 hidden states and the rest runs as usual.
The embeddings and the head still run. This works for any architecture whose blocks are called in
sequence from a ``ModuleList``, because the stored object is whatever the block returned (a tensor
or a tuple), and it is bit-identical to the full forward pass because every shape is unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


class PrefixCache:
    """Stores the outputs of blocks ``every-1, 2*every-1, ...`` and of the last block, per batch."""

    def __init__(self, blocks: list[nn.Module], every: int = 1):
        self.blocks = blocks
        self.every = every
        self.kept = {j for j in range(len(blocks)) if (j + 1) % every == 0} | {len(blocks) - 1}
        self.outputs: list[dict[int, object]] = [dict() for _ in blocks]
        self.current_batch = 0

    @property
    def ready(self) -> bool:
        return bool(self.outputs and self.outputs[len(self.blocks) - 1])

    def resume_point(self, first_quantized: int) -> int:
        """The latest block <= ``first_quantized`` whose input is stored (0 = run everything)."""
        if first_quantized >= len(self.blocks):
            return len(self.blocks)
        return (first_quantized // self.every) * self.every

    @contextmanager
    def capturing(self):
        """Record every block's output per batch (the last one's serves plans that touch only the head)."""
        handles = []
        for j, block in enumerate(self.blocks):
            if j not in self.kept:
                continue

            def hook(module, args, output, j=j):
                self.outputs[j][self.current_batch] = output

            handles.append(block.register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def replaying(self, start: int):
        """Skip blocks ``0..start-1``: each returns block ``start-1``'s stored output."""
        if start <= 0:
            yield
            return
        if not self.ready:
            raise RuntimeError("prefix cache is empty: run the reference pass first")
        if start - 1 not in self.kept:
            raise RuntimeError(f"block {start - 1}'s output is not stored; use resume_point()")
        stored = self.outputs[start - 1]

        def replay(*args, **kwargs):
            return stored[self.current_batch]

        for block in self.blocks[:start]:
            block.forward = replay
        try:
            yield
        finally:
            for block in self.blocks[:start]:
                del block.forward
