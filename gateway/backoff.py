"""Capped exponential backoff with jitter: the one retry pacing every loop here uses.

Delay ``n`` (from 0) is ``min(maximum, initial * 2**n)``, scaled by a random factor in
``[1 - jitter, 1]`` so that many sidecars failing together do not retry in lockstep.
``reset()`` starts over after a success (or after a long stable run, see ``stable_s``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """The next delay to wait before retrying; ``reset()`` after a success."""

    def __init__(
        self,
        initial_s: float,
        maximum_s: float,
        *,
        jitter: float = 0.5,
        stable_s: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < initial_s <= maximum_s:
            raise ValueError(f"need 0 < initial_s <= maximum_s, got {initial_s}, {maximum_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.jitter = jitter
        # A try that lasted this long before failing counts as a success: start over.
        self.stable_s = stable_s if stable_s is not None else maximum_s * 2
        self._rng = rng or random.Random()
        self._clock = clock
        self._attempt = 0
        self._started: float | None = None

    @property
    def attempt(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempt

    def reset(self) -> None:
        """Start over from ``initial_s`` (the last try succeeded)."""
        self._attempt = 0

    def started(self) -> None:
        """A try starts now; if it then lasts ``stable_s`` before failing, ``next()`` resets."""
        self._started = self._clock()

    def next(self) -> float:
        """The delay before the next try (seconds), and count it."""
        if self._started is not None and self._clock() - self._started >= self.stable_s:
            self._attempt = 0
        self._started = None
        ceiling = min(self.maximum_s, self.initial_s * 2.0 ** min(self._attempt, 62))
        self._attempt += 1
        return ceiling * (1.0 - self.jitter * self._rng.random())
