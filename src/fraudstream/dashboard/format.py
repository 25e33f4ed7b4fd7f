"""Turning stored explanations into words for people."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["reasons_text"]


def reasons_text(reasons: Sequence[dict[str, Any]] | None, rule_hits: Sequence[str] | None) -> str:
    """Rule hits first (they decided), then the model's top reasons, as one line."""
    parts = [f"rule: {rule}" for rule in rule_hits or []]
    parts += [str(reason.get("text") or reason.get("feature")) for reason in reasons or []]
    return "; ".join(parts) or "—"
