"""The one rule that turns containerd's HEAD-by-tag + GET-by-digest into a tag pull.

Shared by the memory store; `apply_batch.lua` states the same rule for Redis.
"""

from __future__ import annotations


def pairs(head_ts: float, get_ts: float, window: float, skew: float) -> bool:
    """True when a GET at `get_ts` follows a HEAD at `head_ts` within `window` seconds.

    `skew`: how far the GET may seem to precede the HEAD. Zero when one process
    recorded both (it knows their order); the configured clock skew between two.
    """
    return head_ts - skew <= get_ts <= head_ts + window
