"""Mergeable latency histograms and unique-user sketches for the minute and hour rollups. Pure Python.

Latency: fixed log-scale buckets growing by 2**(1/8) from 0.1 ms. Histograms with fixed boundaries merge
by adding slots, so minute rollups add up to hours and windows exactly. A percentile read from a bucket's
geometric midpoint is within 2**(1/16) - 1 = 4.4% of the true value (shared/reference/metrics-at-scale.md).

Unique users: a HyperLogLog with 2**10 one-byte registers (1 KiB), merged by taking register maxima;
its standard error is 1.04 / sqrt(1024) = 3.25%.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Iterable

import mmh3

BASE_MS = 0.1
GROWTH = math.pow(2, 1 / 8)
SLOTS = 200  # up to 0.1 ms * 2**(199/8), about 56 minutes; slower calls land in the last slot
_LOG_GROWTH = math.log(GROWTH)

HLL_P = 10
HLL_M = 1 << HLL_P
_HLL_ALPHA = 0.7213 / (1 + 1.079 / HLL_M)


def log_latency(latency_ms: float) -> float:
    """What the rollups' log-latency sums hold per call: ln(1 + ms), finite at 0 ms, about ln(ms) for real
    calls. Guardrails compare means of it: a ratio of geometric means, robust to a heavy tail."""
    return math.log1p(latency_ms)


def slot_for(latency_ms: float) -> int:
    if latency_ms < BASE_MS:
        return 0
    return min(SLOTS - 1, 1 + int(math.log(latency_ms / BASE_MS) / _LOG_GROWTH))


def slot_value(slot: int) -> float:
    """The geometric middle of a slot: the estimate for every latency counted in it."""
    if slot == 0:
        return BASE_MS / 2
    low = BASE_MS * GROWTH ** (slot - 1)
    return low * math.sqrt(GROWTH)


def empty() -> list[int]:
    return [0] * SLOTS


def to_bytes(counts: list[int]) -> bytes:
    return array("Q", counts).tobytes()


def from_bytes(data: bytes | memoryview | None) -> list[int]:
    if not data:
        return empty()
    values = array("Q")
    values.frombytes(bytes(data))
    return values.tolist()


def add(into: list[int], other: Iterable[int]) -> list[int]:
    return list(map(operator.add, into, other))


def percentile(counts: list[int], fraction: float) -> float | None:
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    running = 0
    for slot, count in enumerate(counts):
        running += count
        if running >= rank:
            return slot_value(slot)
    return slot_value(SLOTS - 1)  # pragma: no cover - running reaches total above


# --- HyperLogLog -------------------------------------------------------------------------------------------


def hll_empty() -> bytearray:
    return bytearray(HLL_M)


def hll_hash(value: str) -> int:
    return mmh3.hash64(value.encode("utf-8", "surrogatepass"), 0, signed=False)[0]


def hll_add(registers: bytearray, value: str) -> None:
    hll_add_hash(registers, hll_hash(value))


def hll_add_hash(registers: bytearray, h: int) -> None:
    index = h >> (64 - HLL_P)
    rest = (h << HLL_P) & 0xFFFFFFFFFFFFFFFF
    rank = (64 - HLL_P + 1) if rest == 0 else (65 - rest.bit_length())
    if rank > registers[index]:
        registers[index] = rank


def hll_merge(into: bytearray, other: bytes | memoryview | None) -> bytearray:
    if other:
        into[:] = bytes(map(max, into, bytes(other)))
    return into


def hll_count(registers: bytes | bytearray) -> int:
    zeros = registers.count(0)
    estimate = _HLL_ALPHA * HLL_M * HLL_M / sum(2.0**-r for r in registers)
    if estimate <= 2.5 * HLL_M and zeros:
        estimate = HLL_M * math.log(HLL_M / zeros)  # small-range correction (linear counting)
    return round(estimate)
