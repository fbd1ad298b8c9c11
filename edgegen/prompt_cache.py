"""The prompt cache: host copies of earlier sequences' KV caches, so every conversation keeps its prefix.

A Generator has one session, which holds one sequence: on its own, a conversation keeps its prefix between
turns only while no other prompt ran in between (strategies.base.prefill). Before a prefill would drop
positions the session holds, this cache copies them out (Session.snapshot); then, if one of its snapshots
shares more of the new prompt than the session does, it writes that prefix back (Session.restore) and the
prefill forwards only the rest. Saving only when something would be lost keeps a single conversation free
of copies (docs/serve.md has the measured costs; llama.cpp's prompt cache and slot save/restore do the same).

Snapshots are keyed by their token ids and kept least recently used first within a byte budget; one whose
ids are a prefix of a newer one's is dropped, since the newer one serves every prompt it served.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from edgegen.runtimes.base import KVSnapshot, Session, common_prefix_length


def can_snapshot(session: Session) -> bool:
    """Whether ``session`` copies its cache out and back (the optional Session.snapshot / restore)."""
    return hasattr(session, "snapshot") and hasattr(session, "restore")


class PromptCache:
    """KV snapshots within ``budget_bytes``, least recently used evicted first. Not thread-safe: the
    Generator calls it while holding its session."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.budget_bytes = budget_bytes
        self._snapshots: OrderedDict[tuple[int, ...], KVSnapshot] = OrderedDict()  # least recently used first
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._snapshots)

    def keys(self) -> list[tuple[int, ...]]:
        """The token ids of every snapshot held, least recently used first."""
        return list(self._snapshots)

    def prepare(self, session: Session, prompt_ids: Sequence[int]) -> int:
        """Before ``session`` prefills ``prompt_ids``: save what the prefill would drop, then restore the
        snapshot sharing the longest prefix with the prompt where it beats what the session holds.
        Returns the positions restored (0: none)."""
        usable = len(prompt_ids) - 1  # the prefill forwards at least the last prompt token
        kept = min(session.common_prefix(prompt_ids), usable)
        best, shared = None, kept
        for key in self._snapshots:
            n = min(common_prefix_length(key, prompt_ids), usable)
            if n > shared:
                best, shared = key, n
        chosen = None
        if best is not None:
            self._snapshots.move_to_end(best)  # used now: the save below evicts others first
            chosen = self._snapshots[best]
        if kept < session.position:
            self._save(session)  # may evict the chosen one: the session is about to hold the part the prompt uses
        if chosen is None:
            return 0
        session.restore(chosen, shared)  # type: ignore[attr-defined]
        return shared

    def _save(self, session: Session) -> None:
        if any(session.common_prefix(key) == session.position for key in self._snapshots):
            return  # a snapshot already holds all of it (the session was restored and not extended)
        snapshot: KVSnapshot = session.snapshot()  # type: ignore[attr-defined]
        if snapshot.nbytes > self.budget_bytes:
            return
        for key in [k for k in self._snapshots if snapshot.token_ids[: len(k)] == k]:
            self.nbytes -= self._snapshots.pop(key).nbytes  # dominated: the new one serves its prompts too
        self._snapshots[snapshot.token_ids] = snapshot
        self.nbytes += snapshot.nbytes
        while self.nbytes > self.budget_bytes:
            _, evicted = self._snapshots.popitem(last=False)
            self.nbytes -= evicted.nbytes
