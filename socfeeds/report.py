"""What runs return: the changes provisioning made (or would make) and the findings of checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
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


def table_rows(items: Iterable[BaseModel]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in item.model_dump(mode="json").items()} for item in items]


def render_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    """A fixed-width text table for logs and terminals (artifacts get the markdown table)."""
    if not rows:
        return "(nothing)"
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    line = "  ".join(c.upper().ljust(widths[c]) for c in columns)
    body = ["  ".join(r.get(c, "").ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, *body])
