"""A site's typed refusal of a run or a round, and its one codec on the wire.

Split from :mod:`fedvault.common.protocol`, which imports these names so that every
wire name can still be read there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from flwr.app import ConfigRecord, Message, RecordDict

from fedvault.common.errors import BudgetExceededError, PrivacyError

DECLINE = "decline"  # ConfigRecord of a typed decline
DECLINE_PREFIX = "fedvault-decline:"  # error reason of a decline in a SecAgg+ round

DeclineReason = Literal["budget", "policy", "data"]
DECLINE_REASONS: tuple[DeclineReason, ...] = get_args(DeclineReason)


@dataclass(frozen=True)
class Decline:
    """Why a site refuses a round: its budget would be passed (``budget``), its
    policy broken (``policy``), or its data cannot serve (``data``).

    The one codec of a decline: a ``decline`` ConfigRecord in a plain reply, or an
    error reason starting with :data:`DECLINE_PREFIX` in a SecAgg+ round.
    """

    reason: DeclineReason
    detail: str

    def as_error(self) -> PrivacyError:
        """The matching exception, for callers that prefer raising."""
        if self.reason == "budget":
            return BudgetExceededError(self.detail)
        return PrivacyError(self.detail)

    def to_content(self) -> RecordDict:
        """The content of the decline reply."""
        record = ConfigRecord({"reason": self.reason, "detail": self.detail})
        return RecordDict({DECLINE: record})

    def reply(self, msg: Message) -> Message:
        """The decline reply to ``msg``."""
        return Message(self.to_content(), reply_to=msg)

    @classmethod
    def from_content(cls, content: RecordDict) -> Decline | None:
        """The decline a reply's content holds, or None when it holds none.

        An unknown reason is read as ``policy`` (the site refused), keeping the
        site's own words in ``detail``.
        """
        record = content.config_records.get(DECLINE)
        if record is None:
            return None
        return cls._of(str(record.get("reason", "")), str(record.get("detail", "")))

    def to_reason(self) -> str:
        """The reason string of a Flower ``Error`` carrying this decline."""
        return f"{DECLINE_PREFIX}{self.reason}: {self.detail}"

    @classmethod
    def from_reason(cls, reason: str) -> Decline | None:
        """The decline an error reason carries, or None for any other error."""
        if not reason.startswith(DECLINE_PREFIX):
            return None
        kind, _, detail = reason.removeprefix(DECLINE_PREFIX).partition(":")
        return cls._of(kind.strip(), detail.strip())

    @classmethod
    def _of(cls, kind: str, detail: str) -> Decline:
        reason: DeclineReason = "policy"
        for known in DECLINE_REASONS:
            if kind == known:
                reason = known
        return cls(reason, detail if kind in DECLINE_REASONS else f"{kind}: {detail}")
