"""The per-node KV block allocator."""

import pytest

from vllm_helix.errors import KVCacheFull
from vllm_helix.node.kv_blocks import BlockAllocator, blocks_for


def test_blocks_for_rounds_up():
    assert [blocks_for(n, 16) for n in (0, 1, 16, 17)] == [0, 1, 1, 2]


def test_grow_adds_only_missing_blocks_and_never_hands_out_block_zero():
    alloc = BlockAllocator(num_blocks=5, block_size=4)
    assert alloc.total == 4
    first = alloc.grow("a", 5)
    assert len(first) == 2 and 0 not in first
    assert alloc.grow("a", 8) == [] and alloc.used == 2
    assert len(alloc.grow("a", 9)) == 1 and alloc.table("a")[:2] == first


def test_free_returns_blocks_and_full_cache_raises():
    alloc = BlockAllocator(num_blocks=3, block_size=4)
    alloc.grow("a", 8)
    assert not alloc.can_fit("b", 1)
    with pytest.raises(KVCacheFull, match="admit fewer"):
        alloc.grow("b", 1)
    assert alloc.free("a") == 2 and alloc.used == 0 and alloc.free("a") == 0
    assert alloc.can_fit("b", 8)


def test_missing_counts_only_the_blocks_a_table_lacks():
    alloc = BlockAllocator(num_blocks=5, block_size=4)
    assert alloc.missing("a", 9) == 3
    alloc.grow("a", 5)
    assert [alloc.missing("a", n) for n in (4, 8, 9)] == [0, 0, 1]
