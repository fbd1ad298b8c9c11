"""How many tokens to draft next: the length with the most expected tokens per second (speculative, lexical)."""

from __future__ import annotations


class DraftLength:
    """Picks each step's draft length from the acceptance history and the measured costs.

    Acceptance: the drafter's per-token acceptance rate a, from decayed counts of accepted tokens
    and of rejections, with a prior of 1/2 that keeps it away from 0 and 1, kept per draft kind
    (Draft.kind: prompt lookup's matched n-gram length, whose drafts are right 22% of the time after
    a one-token match and 75% after a three-token one on chat answers). Drafting n tokens then
    yields 1 + a + ... + a^n tokens on average. Cost: the target forward of n + 1 rows, whose time
    is measured online per row count (a line through the measured counts predicts the others), plus
    the drafter's measured time per token. The length with the most expected tokens per second wins,
    0 included: a drafter that keeps missing stops costing verification rows. The decay forgets old
    evidence (also during plain steps, when a drifts back to the prior), so drafting is retried.
    """

    def __init__(self, initial: int = 4, maximum: int = 10, adaptive: bool = True, decay: float = 0.9,
                 idle_decay: float = 0.98) -> None:
        self.initial, self.maximum, self.adaptive = initial, maximum, adaptive
        self.decay, self.idle_decay = decay, idle_decay  # per drafted step; per plain step (slow retries)
        self._counts: dict[int, list[float]] = {}  # draft kind -> decayed [accepted tokens, rejections]
        self._forward_s: dict[int, float] = {}  # rows -> smoothed seconds of one target forward
        self._line: tuple[float, float] | None = None  # (slope, intercept) through _forward_s; None: refit
        self._draft_s = 0.0  # smoothed drafter seconds per drafted token
        self.current = initial

    def acceptance(self, kind: int = 0) -> float:
        """Per-token acceptance of drafts of ``kind``."""
        accepted, rejected = self._counts.get(kind, (0.0, 0.0))
        # a prior of 1/2 worth half a step: a few misses suffice to stop drafting
        return (accepted + 0.25) / (accepted + rejected + 0.5)

    def forward_seconds(self, rows: int) -> float:
        """Predicted seconds of a target forward over ``rows`` rows."""
        if rows in self._forward_s:
            return self._forward_s[rows]
        if len(self._forward_s) < 2:  # one measurement: assume each extra row costs a tenth of it
            known = next(iter(self._forward_s), 1)
            base = self._forward_s.get(known, 1.0)
            return base * (1 + 0.1 * (rows - known))
        if self._line is None:  # refit once per recorded step, not once per candidate length
            self._line = _fit_line(self._forward_s)
        return max(self._line[1] + self._line[0] * rows, 1e-6)

    def choose(self, room: int, kind: int = 0) -> int:
        """Draft length for the next step, at most ``room``, for a draft of ``kind``."""
        if not self.adaptive or not self._forward_s:
            return min(self.current, room)
        a = self.acceptance(kind)
        best, best_rate = 0, 0.0
        for n in range(min(self.maximum, room) + 1):
            expected = (1 - a ** (n + 1)) / (1 - a)
            rate = expected / (self.forward_seconds(n + 1) + n * self._draft_s)
            if rate > best_rate:
                best, best_rate = n, rate
        self.current = best
        return best

    def update(self, proposed: int, accepted: int, rows: int, forward_s: float, draft_s: float,
               kind: int = 0) -> None:
        """Record one step: ``accepted`` of ``proposed`` draft tokens of ``kind`` (none proposed: a draft of that
        kind was declined), a target forward of ``rows`` rows."""
        decay = self.decay if proposed else self.idle_decay
        counts = self._counts.setdefault(kind, [0.0, 0.0])
        counts[0] = decay * counts[0] + accepted
        counts[1] = decay * counts[1] + (accepted < proposed)
        old = self._forward_s.get(rows)
        self._forward_s[rows] = forward_s if old is None else 0.8 * old + 0.2 * forward_s
        self._line = None
        if proposed:
            per_token = draft_s / proposed
            self._draft_s = per_token if self._draft_s == 0.0 else 0.8 * self._draft_s + 0.2 * per_token


def _fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares (slope >= 0, intercept) through {rows: seconds}, in plain floats: called every step,
    where numpy.polyfit's setup cost more than the decode loop's own work."""
    n = len(points)
    mean_x = sum(points) / n
    mean_y = sum(points.values()) / n
    sxx = sum((x - mean_x) ** 2 for x in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points.items())
    slope = sxy / sxx
    return max(slope, 0.0), mean_y - slope * mean_x
