"""The response bodies as OpenAPI documents them. The API encodes ``DecisionOut``
(``api/decisions.py``) directly; a test checks every answer against ``DecisionResponse``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["ERROR_RESPONSES", "DecisionResponse", "ErrorResponse"]


class DecisionResponse(BaseModel):
    tx_id: str
    decision: Literal["approve", "review", "decline"]
    score: float | None = Field(description="The model's fraud probability; null when degraded.")
    reasons: list[str] = Field(description="Why, in words: rules that fired, then top features.")
    rule_hits: list[str]
    model_version: str | None
    rules_version: str
    degraded: bool = Field(
        description="True when the owning engine could not decide within api.budget_ms: the "
        "answer is the fallback policy's; the full decision is still made and stored."
    )
    degraded_reason: str | None = None
    stale: list[str] = Field(default=[], description="Inputs used although out of date.")
    missing: list[str] = Field(default=[], description="Inputs the decision did without.")
    replayed: bool = Field(
        default=False, description="The stored decision of an earlier identical request."
    )
    decided_at: datetime = Field(description="When the server answered.")
    decision_ms: float = Field(description="Server time from the request's body to the answer.")


class ErrorResponse(BaseModel):
    error: str
    message: str
    field: str | None = Field(default=None, description="422: the field at fault, if one.")
    rule: str | None = Field(default=None, description="422: the rule it breaks.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No valid API key."},
    409: {"model": ErrorResponse, "description": "The tx_id was decided with other content."},
    413: {"model": ErrorResponse, "description": "Larger than any transaction can be."},
    422: {"model": ErrorResponse, "description": "Not a valid transaction: field and rule."},
    429: {"model": ErrorResponse, "description": "Over the key's rate limit (Retry-After)."},
}
