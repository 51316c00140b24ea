"""The one exception type a flow treats as an expected failure rather than a crash."""

from __future__ import annotations


class OnCallError(Exception):
    """A failure whose message is the whole story for on-call: what failed, where, and the fix.

    A flow ends Failed with it as a one-line state message and no traceback (flows._common.leaves_a_record);
    anything else is a bug, and keeps its traceback.
    """
