"""Settings of delivery assurance: the audit of real logs, and each feed's service-level objectives.

Kept apart from socfeeds.settings (which imports them) so the audit, SLO and dead-man's-switch code reads one
small module.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SloObjectives(_Strict):
    """What the SOC is promised per feed; each run's `feed-slos` artifact shows the value and the budget left."""

    canary_latency_p95_seconds: float = Field(900, gt=0, description="95% of canary events confirmed within this.")
    completeness: float = Field(0.999, gt=0, le=1, description="Share of real records found in XSIAM (audit).")
    staleness_seconds: float = Field(3600, gt=0, description="Age of the newest event XSIAM holds for the feed.")
    staleness_compliance: float = Field(
        0.99, gt=0, le=1, description="Share of audits whose staleness is within staleness_seconds (its error budget).")
    canary_success: float = Field(0.99, gt=0, le=1, description="Share of canary runs that pass.")
    window_days: int = Field(30, ge=1, le=365, description="The window the error budget is counted over.")


class AuditSettings(_Strict):
    """audit-feeds: sample real log objects and find their records in XSIAM."""

    window_hours: float = Field(24, gt=0, le=24 * 14, description="How far back objects are listed.")
    sample: int = Field(50, ge=1, le=5000, description="Objects drawn at random per feed.")
    records_per_object: int = Field(3, ge=1, le=50, description="Records looked up per sampled object.")
    settle_minutes: float = Field(
        15, ge=0, description="Objects younger than this are left out: XSIAM may not have collected them yet.")
    deadline_seconds: float = Field(
        600, gt=0, le=3600, description="How long one feed's XQL lookups may take; queries still pending then "
        "count their needles as not found.")
    expected_every: timedelta = Field(
        timedelta(hours=26), ge=timedelta(seconds=10), description="The dead-man's switch alerts when no audit "
        "completes within this (seconds or ISO 8601, e.g. PT26H; at least 10 s, Prefect's proactive minimum).")
