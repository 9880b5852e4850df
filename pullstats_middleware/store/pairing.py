"""The one rule that turns containerd's HEAD-by-tag + GET-by-digest into a tag pull.

Shared by the memory store and (as constants handed to Lua) the Redis store.
"""

from __future__ import annotations

# Processes on different hosts disagree a little about the time; a GET that
# appears to precede its HEAD by less than this still pairs with it.
CLOCK_SKEW = 2.0


def pairs(head_ts: float, get_ts: float, window: float) -> bool:
    """True when a GET at `get_ts` follows a HEAD at `head_ts` within `window` seconds."""
    return head_ts - CLOCK_SKEW <= get_ts <= head_ts + window
