"""Pseudonymous user ids in what the service publishes: alerts and the health API.

With a key configured (``service.user_id_key`` or ``service.user_id_key_file``), every user id
that leaves the service is replaced by ``u_`` + the first 32 hex digits of
HMAC-SHA256(key, user id): stable (the same user always gets the same pseudonym, so
consumers can still group and de-duplicate), and without the key nobody can tell which user
it is, not even by hashing a list of candidate ids. Team ids are accounts, not people, and
stay as they are. The engine and its state keep the real ids; replay output too (it is
compared with ground truth offline).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .redaction import redact_in_logs
from .settings import ServiceSettings

PREFIX = "u_"
_HEX_CHARS = 32  # 128 bits


class Pseudonyms:
    """Keyed pseudonyms for user ids; with no key, ids pass through unchanged.

    >>> p = Pseudonyms(b"k" * 32)
    >>> p.user("alice") == p.user("alice") != p.user("bob"), p.user("alice")[:2]
    (True, 'u_')
    >>> Pseudonyms(None).user("alice")
    'alice'
    """

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, s: ServiceSettings) -> Pseudonyms:
        """The key from the setting, or read from the key file (at the entry point only)."""
        if s.user_id_key_file:
            key: bytes | None = Path(s.user_id_key_file).read_bytes().strip()
        else:
            key = s.user_id_key.encode() if s.user_id_key else None
        pseudonyms = cls(key)
        redact_in_logs(pseudonyms.key_text)
        return pseudonyms

    @property
    def enabled(self) -> bool:
        return self._key is not None

    @property
    def key_text(self) -> str | None:
        """The key as text, for log redaction only."""
        return None if self._key is None else self._key.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"Pseudonyms(enabled={self.enabled})"

    def _digest(self, purpose: str, value: str) -> str:
        assert self._key is not None
        message = f"{purpose}\x1f{value}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_HEX_CHARS]

    def user(self, user_id: str) -> str:
        return user_id if self._key is None else PREFIX + self._digest("user", user_id)

    def alert(self, alert: dict[str, Any]) -> dict[str, Any]:
        """A user alert with the pseudonym as entity id and subject; its id re-keyed too
        (the plain id is a hash of the user id, which a list of candidate ids would reveal).

        >>> from detector.alerts import build_alert
        >>> a = build_alert(entity_type="user", entity_id="alice", team_id="t", state="cooling",
        ...     previous_state="healthy", signal="silence", risk=0.5, reasons=[], day=20500,
        ...     event_time_ms=0, window_days=7, plan=None, mrr=None)
        >>> b = Pseudonyms(b"k" * 32).alert(a)
        >>> "alice" in str(b), b["subject"] == "user/" + b["data"]["entity_id"], b["id"] != a["id"]
        (False, True, True)
        """
        data = alert["data"]
        if self._key is None or data["entity_type"] != "user":
            return alert
        pseudonym = self.user(data["entity_id"])
        return {
            **alert,
            "id": self._digest("alert", alert["id"]),
            "subject": f"user/{pseudonym}",
            "data": {**data, "entity_id": pseudonym},
        }

    def alerts(self, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.alert(a) for a in alerts] if self._key is not None else alerts

    def find(self, user_ids: Iterable[str], wanted: str) -> str | None:
        """The real id among ``user_ids`` that ``wanted`` names: the id itself without a key,
        else the id whose pseudonym it is (a scan: ~1 µs per user held by this worker).
        With a key, a real id is not accepted: it would link users to pseudonyms."""
        if self._key is None:
            return wanted
        if not wanted.startswith(PREFIX):
            return None
        return next((uid for uid in user_ids if self.user(uid) == wanted), None)
