"""Memberships: which team each user belongs to, for Segment messages that do not say.

Segment and RudderStack tie a user to a team (an account, a workspace) with a ``group``
call; many sources then send ``track``, ``page`` and ``identify`` calls without
``context.groupId``. Such a message gets the team of its user's latest group call (or of a
canonical ``team.updated`` event sent by that user). Before any such call it has no team,
and it is dead-lettered as ``missing_field:team_id``.

The map is learned from the stream in its order: replay learns it from the file (sorted
by event time), the worker from the messages ingest has read, shared with the other workers
through a compacted topic. No I/O here.
"""

from __future__ import annotations

from .events import TEAM_UPDATED, EventFields


class Memberships:
    """The team of each user's latest group call.

    >>> m = Memberships()
    >>> m.observe(("e1", "team.updated", 5, "u1", "t1", {}))
    True
    >>> m.team_of("u1"), m.team_of("u2")
    ('t1', None)
    >>> m.observe(("e2", "team.updated", 6, "u1", "t1", {})), m.observe(("e3", "feature.used", 7, "u1", "t9", {}))
    (False, False)
    """

    __slots__ = ("teams",)

    def __init__(self) -> None:
        #: user id -> team id
        self.teams: dict[str, str] = {}

    def team_of(self, user_id: str) -> str | None:
        return self.teams.get(user_id)

    def observe(self, fields: EventFields) -> bool:
        """Learn from a valid event; True when it tied its user to another team than before
        (the worker then shares the change)."""
        if fields[1] != TEAM_UPDATED or fields[3] is None:
            return False
        user, team = fields[3], fields[4]
        if self.teams.get(user) == team:
            return False
        self.teams[user] = team
        return True

    def learn(self, user_id: str, team_id: str | None) -> None:
        """Take a membership another worker shared (``None``: the user has none any more)."""
        if team_id is None:
            self.teams.pop(user_id, None)
        else:
            self.teams[user_id] = team_id

    def __len__(self) -> int:
        return len(self.teams)
