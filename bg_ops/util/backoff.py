"""Retry spacing shared by the queues (email, uploads)."""

from __future__ import annotations

import random


def jittered_backoff(attempts: int, *, base: float, maximum: float, rng: random.Random) -> float:
    """Seconds before the next try: exponential in ``attempts``, capped at ``maximum``; half
    the step fixed, half random, so retries of many rows spread out instead of arriving together."""
    step = min(maximum, base * 2 ** max(0, attempts - 1))
    return step / 2 + rng.random() * step / 2
