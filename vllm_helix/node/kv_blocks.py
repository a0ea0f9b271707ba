"""Per-node paged KV-cache block accounting: a free list and each request's block table."""

from __future__ import annotations

from vllm_helix.errors import KVCacheFull


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockAllocator:
    """Hands out block ids 1..num_blocks-1 (block 0 is reserved, as vLLM's null block)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.total = num_blocks - 1
        self._free = list(range(num_blocks - 1, 0, -1))
        self._tables: dict[str, list[int]] = {}

    @property
    def used(self) -> int:
        return self.total - len(self._free)

    def can_fit(self, request_id: str, num_tokens: int) -> bool:
        return self.missing(request_id, num_tokens) <= len(self._free)

    def missing(self, request_id: str, num_tokens: int) -> int:
        """Blocks the request's table lacks to hold ``num_tokens`` tokens."""
        return max(0, blocks_for(num_tokens, self.block_size) - len(self._tables.get(request_id, ())))

    def grow(self, request_id: str, num_tokens: int) -> list[int]:
        """Make the request's table hold ``num_tokens`` tokens; return the newly added block ids."""
        table = self._tables.setdefault(request_id, [])
        need = blocks_for(num_tokens, self.block_size) - len(table)
        if need > len(self._free):
            raise KVCacheFull(
                f"request {request_id!r} needs {need} more KV blocks, {len(self._free)} free of "
                f"{self.total}; admit fewer requests to this node"
            )
        new = [self._free.pop() for _ in range(max(need, 0))]
        table.extend(new)
        return new

    def table(self, request_id: str) -> list[int]:
        return list(self._tables.get(request_id, ()))

    def free(self, request_id: str) -> int:
        table = self._tables.pop(request_id, [])
        self._free.extend(reversed(table))
        return len(table)
