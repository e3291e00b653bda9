"""Admission warnings that survive the apiserver's limits, most important first.

kube-apiserver keeps at most 4,096 runes of warnings per response; past that it cuts every item to
256 runes and drops the rest (k8s.io/apiserver `endpoints/filters/warning.go`). A pod with 2,000
unresolvable images would lose the warnings that matter to that arithmetic. `fit` decides instead:
items in the order given (policy puts what cannot run before what could not be resolved), each within
`item_runes`, the whole within `total_runes`, and a last line that says how many were left out
("... and 1,990 more warnings"). The full list belongs in the ImageAudit and the Event.

Python's `len` of a `str` counts code points, which is what Go counts as runes. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ITEM_RUNES", "TOTAL_RUNES", "clip", "fit"]

TOTAL_RUNES = 4096
ITEM_RUNES = 256
_ELLIPSIS = "..."


def clip(text: str, limit: int) -> str:
    """`text` within `limit` runes, ending in "..." when it was cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS[:limit]


def _more(n: int) -> str:
    return f"... and {n:,} more warning{'s' if n != 1 else ''} (the ImageAudit and the Event list them all)"


def fit(
    warnings: Sequence[str], *, total_runes: int = TOTAL_RUNES, item_runes: int = ITEM_RUNES
) -> tuple[str, ...]:
    """`warnings` as the apiserver will pass them on unchanged: see the module docstring.

    A list that fits already is returned as it is (same items, same order), so the common case costs
    one pass of `len`.
    """
    if len(warnings) * item_runes <= total_runes and all(len(w) <= item_runes for w in warnings):
        return tuple(warnings)
    clipped = [clip(w, item_runes) for w in warnings]
    if sum(map(len, clipped)) <= total_runes:
        return tuple(clipped)
    kept: list[str] = []
    used = 0
    for i, text in enumerate(clipped):
        # Room for this item and for the line that counts what follows it.
        tail = len(_more(len(clipped) - i - 1)) if i < len(clipped) - 1 else 0
        if used + len(text) + tail > total_runes:
            break
        kept.append(text)
        used += len(text)
    left = len(clipped) - len(kept)
    if left:
        kept.append(clip(_more(left), item_runes))
    return tuple(kept)
