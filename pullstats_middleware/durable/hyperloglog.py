"""Unique pullers as HyperLogLog sketches: small, mergeable, about 0.8 % standard error.

A sketch is 2^14 registers; a puller's 64-bit hash picks a register with its low
14 bits and offers it the rank of the other 50 (their leading zeros, plus one);
each register keeps the highest rank it was offered. Merging is a
register-wise maximum, so adding the same puller twice, or merging one day's
sketch into itself, changes nothing: a flush that is re-run cannot inflate it.

Stored as bytes: `s` and (index, rank) triples while few registers are set (a
day of 3 pullers is 10 bytes), `d` and all registers once that is smaller.
The estimate is Ertl's ("New cardinality estimation algorithms for HyperLogLog
sketches", 2017; Redis uses it too): no bias tables, exact-ish for small sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

P = 14
M = 1 << P
Q = 64 - P  # bits left for the rank
_INDEX_MASK = M - 1
_ALPHA_INF = 0.5 / math.log(2)


class Sketch:
    """Registers that are not zero, by index."""

    __slots__ = ("registers",)

    def __init__(self, registers: dict[int, int] | None = None) -> None:
        self.registers = registers if registers is not None else {}

    def add(self, puller: str) -> None:
        """`puller`: 16 hex digits, the 64-bit hash the stores write (store.base.puller_key)."""
        value = int(puller, 16)
        index, rest = value & _INDEX_MASK, value >> P
        rank = Q + 1 - rest.bit_length()
        if rank > self.registers.get(index, 0):
            self.registers[index] = rank

    def update(self, pullers: Iterable[str]) -> Sketch:
        for puller in pullers:
            self.add(puller)
        return self

    def merge(self, other: Sketch) -> Sketch:
        mine = self.registers
        for index, rank in other.registers.items():
            if rank > mine.get(index, 0):
                mine[index] = rank
        return self

    def estimate(self) -> int:
        if not self.registers:
            return 0
        histogram = [0] * (Q + 2)
        histogram[0] = M - len(self.registers)
        for rank in self.registers.values():
            histogram[rank] += 1
        z = M * _tau((M - histogram[Q + 1]) / M)
        for k in range(Q, 0, -1):
            z = 0.5 * (z + histogram[k])
        z += M * _sigma(histogram[0] / M)
        return round(_ALPHA_INF * M * M / z)

    def to_bytes(self) -> bytes:
        if len(self.registers) * 3 < M:
            out = bytearray(b"s")
            for index in sorted(self.registers):
                out += bytes((index >> 8, index & 0xFF, self.registers[index]))
            return bytes(out)
        dense = bytearray(M)
        for index, rank in self.registers.items():
            dense[index] = rank
        return b"d" + bytes(dense)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Sketch:
        """A stored sketch; ValueError naming what is wrong with one that is not."""
        if not data:
            return cls()
        kind, body = data[:1], data[1:]
        if kind == b"s" and len(body) % 3 == 0:
            registers = {(body[n] << 8) | body[n + 1]: body[n + 2] for n in range(0, len(body), 3)}
        elif kind == b"d" and len(body) == M:
            registers = {index: rank for index, rank in enumerate(body) if rank}
        else:
            raise ValueError(f"not a pullers sketch ({len(data)} bytes, kind {kind!r})")
        if any(not 0 < rank <= Q + 1 or index >= M for index, rank in registers.items()):
            raise ValueError("a pullers sketch with a register out of range")
        return cls(registers)


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        previous, z = z, z + x * y
        y += y
        if z == previous:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        y *= 0.5
        previous, z = z, z - (1.0 - x) ** 2 * y
        if z == previous:
            return z / 3
