"""What runs return: the changes provisioning made (or would make) and the findings of checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a check status, not a password)
    WARN = "warn"
    FAIL = "fail"


class Finding(BaseModel):
    """One check's outcome, worded for the on-call engineer: what is wrong and the fix."""

    model_config = ConfigDict(frozen=True)

    feed: str
    resource: str
    check: str
    status: Status
    detail: str
    fix: str = ""


class Change(BaseModel):
    """One change to AWS, made or (in a dry run, or for a resource Terraform owns) planned.

    `wanted` is what the API call would send (JSON), so the change can be written in its owner's Terraform."""

    model_config = ConfigDict(frozen=True)

    feed: str
    resource: str
    action: str
    detail: str
    applied: bool
    owner: str = "socfeeds"
    wanted: str = ""


class FindingsFor:
    """Collects findings for one feed and resource, so checks read as a list of assertions."""

    def __init__(self, feed: str, resource: str) -> None:
        self.feed, self.resource = feed, resource
        self.findings: list[Finding] = []

    def add(self, check: str, status: Status, detail: str, fix: str = "") -> None:
        self.findings.append(Finding(feed=self.feed, resource=self.resource, check=check,
                                     status=status, detail=detail, fix=fix))

    def expect(self, check: str, ok: bool, detail: str, fix: str, *, failing: Status = Status.FAIL) -> bool:
        """Record pass when ok, else `failing` with the fix; returns ok."""
        self.add(check, Status.PASS if ok else failing, detail, "" if ok else fix)
        return ok


class ChangesFor:
    """Records the changes for one feed and resource, applying each one unless this is a dry run."""

    def __init__(self, feed: str, resource: str, dry_run: bool) -> None:
        self.feed, self.resource, self.dry_run = feed, resource, dry_run
        self.changes: list[Change] = []

    def make(self, action: str, detail: str, apply: Callable[[], object], wanted: object = None) -> None:
        if not self.dry_run:
            apply()
        self.changes.append(Change(feed=self.feed, resource=self.resource, action=action, detail=detail,
                                   applied=not self.dry_run,
                                   wanted="" if wanted is None else json.dumps(wanted, sort_keys=True, default=str)))


STATUS_ORDER = {Status.FAIL: 0, Status.WARN: 1, Status.PASS: 2}
MISSING = "\u2014"  # an em dash: "-" alone is a list bullet in the UI's markdown, None reads as a bug


def cell(value: object) -> str:
    """A value as a table shows it: a missing one as an em dash, never "None" or a bare "-"."""
    return MISSING if value is None or value == "-" else str(value)


def table_rows(items: Iterable[BaseModel], columns: Sequence[str] = ()) -> list[dict[str, str]]:
    """One row per item, `columns` first in that order (the UI shows keys as they come), then the rest."""
    rows = []
    for item in items:
        fields = item.model_dump(mode="json")
        ordered = [*columns, *(k for k in fields if k not in columns)]
        rows.append({k: cell(fields.get(k)) for k in ordered})
    return rows


def markdown_table(rows: list[dict[str, str]], columns: Sequence[str]) -> str:
    """A markdown table; pipes and line breaks inside a cell would break its row."""
    def escape(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return "\n".join([" | ".join(columns), " | ".join("---" for _ in columns),
                      *(" | ".join(escape(r.get(c, MISSING)) for c in columns) for r in rows)])


def render_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    """A fixed-width text table for logs and terminals (artifacts get the markdown table)."""
    if not rows:
        return "(nothing)"
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    line = "  ".join(c.upper().ljust(widths[c]) for c in columns)
    body = ["  ".join(r.get(c, "").ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, *body])
