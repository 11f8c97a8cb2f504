"""What the fuzz tests share: one mutation of encoded bytes (bit flips, a truncation, a length field set to an edge
or random value, or random bytes spliced in) and the node's memory budget over a run."""

from __future__ import annotations

from typing import Literal

from hypothesis import strategies as st

#: The node's resident memory may grow by less than this over a fuzz run (issue 23).
RSS_GROWTH_LIMIT = 50e6


def mutate(draw, seed: bytes, length_fields: list[tuple[int, int]], edge_lengths: list[int],
           byteorder: Literal["little", "big"]) -> bytes:
    """``seed`` with one mutation drawn by ``draw`` (a ``st.composite`` draw); ``length_fields``: (offset, size) of
    the length fields a length mutation may set, written in ``byteorder``."""
    buffer = bytearray(seed)
    kind = draw(st.sampled_from(["flip", "truncate", "length", "splice"]))
    if kind == "flip":
        for position in draw(st.lists(st.integers(0, len(buffer) - 1), min_size=1, max_size=8)):
            buffer[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del buffer[draw(st.integers(0, len(buffer) - 1)):]
    elif kind == "length":
        offset, size = draw(st.sampled_from(length_fields))
        value = draw(st.sampled_from(edge_lengths) | st.integers(0, 2 ** (8 * size) - 1)) % 2 ** (8 * size)
        buffer[offset : offset + size] = value.to_bytes(size, byteorder)
    else:
        position = draw(st.integers(0, len(buffer)))
        buffer[position:position] = draw(st.binary(min_size=1, max_size=64))
    return bytes(buffer)
