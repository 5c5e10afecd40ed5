"""Memberships: the team of a user's latest group call, for calls that do not name theirs."""

from __future__ import annotations

import orjson

from detector.events import Invalid, decode_fields
from detector.memberships import Memberships


def _call(**fields: object) -> bytes:
    return orjson.dumps({"messageId": "m", "timestamp": 1772356502123, **fields})


def test_a_call_without_its_team_takes_the_team_of_its_users_latest_group_call():
    memberships = Memberships()
    track = _call(type="track", userId="u1", event="Report Viewed")
    assert decode_fields(track, team_of=memberships.team_of) == Invalid(
        "missing_field:team_id",
        "no context.groupId, and no group call has tied its user to a team",
    )
    for team in ("t1", "t2"):
        group = decode_fields(_call(type="group", userId="u1", groupId=team, traits={}))
        assert not isinstance(group, Invalid) and memberships.observe(group)
    joined = decode_fields(track, team_of=memberships.team_of)
    assert not isinstance(joined, Invalid) and joined[4] == "t2"  # the latest one


def test_a_call_that_names_its_team_keeps_it_and_other_events_teach_nothing():
    memberships = Memberships()
    group = decode_fields(_call(type="group", userId="u1", groupId="t1", traits={}))
    assert not isinstance(group, Invalid) and memberships.observe(group)
    named = _call(type="track", userId="u1", event="Report Viewed", context={"groupId": "t9"})
    fields = decode_fields(named, team_of=memberships.team_of)
    assert not isinstance(fields, Invalid) and fields[4] == "t9"
    assert not memberships.observe(fields)  # activity in a team is not a membership
    no_user = decode_fields(_call(type="group", anonymousId="a", groupId="t3", traits={}))
    assert not isinstance(no_user, Invalid) and not memberships.observe(no_user)
    assert memberships.teams == {"u1": "t1"}
