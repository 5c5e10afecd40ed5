from __future__ import annotations

from collections.abc import Iterable

from detector import codec
from detector import health as hs
from detector.engine import PartitionEngine
from detector.events import Event
from detector.scoring import Signal
from detector.settings import EngineSettings
from detector.state import UserState
from detector.timemodel import DAY_MS, HOUR_MS

from .streams import START_DAY, TeamSpec, healthy_teams, stream


def run(
    events: Iterable[Event], settings: EngineSettings | None = None
) -> tuple[PartitionEngine, list[dict]]:
    engine = PartitionEngine(settings or EngineSettings(), clock=lambda: 0.0)
    alerts: list[dict] = []
    for ev in events:
        assert engine.process(ev) is None
        alerts.extend(engine.drain_alerts())
    return engine, alerts


def team_alerts(alerts: list[dict], team_id: str, state: str | None = None) -> list[dict]:
    return [
        a
        for a in alerts
        if a["data"]["entity_type"] == "team"
        and a["data"]["entity_id"] == team_id
        and (state is None or a["data"]["state"] == state)
    ]


def day_of(alert: dict) -> int:
    from detector.evaluation import parse_time_ms

    return (parse_time_ms(alert["data"]["event_time"]) - 1) // DAY_MS - START_DAY


def test_steady_teams_raise_no_alerts():
    _, alerts = run(stream(healthy_teams(30), days=120))
    assert [a for a in alerts if a["data"]["entity_type"] == "team"] == []


def test_team_that_goes_silent_is_flagged_without_any_event_of_its_own():
    silent = TeamSpec("quiet", 6, level=lambda d: 1.0 if d < 60 else 0.0)
    _, alerts = run(stream([*healthy_teams(25), silent], days=100))
    at_risk = team_alerts(alerts, "quiet", "at_risk")
    assert at_risk, "a silent team must be flagged by the sweep"
    assert at_risk[0]["data"]["signal"] in {"silence", "team_decay"}
    assert 60 < day_of(at_risk[0]) <= 70


def test_gradual_decay_is_flagged_before_cancellation_with_reasons():
    decaying = TeamSpec(
        "fading",
        10,
        level=lambda d: 1.0 if d < 60 else max(0.05, 1 - (d - 60) / 40),
        cancel_day=100,
    )
    engine, alerts = run(stream([*healthy_teams(25), decaying], days=110))
    first = team_alerts(alerts, "fading", "at_risk")[0]
    assert first["data"]["signal"] == "team_decay"
    assert day_of(first) < 100
    codes = {r["code"] for r in first["data"]["reasons"]}
    assert "active_users_drop" in codes
    churned = team_alerts(alerts, "fading", "churned")
    assert churned and churned[0]["data"]["signal"] == "cancellation"
    assert engine.teams["fading"].health == hs.CHURNED


def test_population_wide_drop_is_not_churn():
    holiday = lambda d: 0.3 if 70 <= d < 80 else 1.0  # noqa: E731
    teams = [TeamSpec(f"h{i}", 6, level=holiday) for i in range(30)]
    _, alerts = run(stream(teams, days=110))
    assert [
        a for a in alerts if a["data"]["entity_type"] == "team" and a["data"]["state"] == "at_risk"
    ] == []


def test_one_team_dropping_during_a_holiday_is_still_flagged():
    holiday = lambda d: 0.5 if 70 <= d < 84 else 1.0  # noqa: E731
    teams = [TeamSpec(f"h{i}", 8, level=holiday) for i in range(30)]
    teams.append(TeamSpec("gone", 8, level=lambda d: 1.0 if d < 68 else 0.08))
    _, alerts = run(stream(teams, days=100))
    assert team_alerts(alerts, "gone", "at_risk")
    others = [
        a
        for a in alerts
        if a["data"]["entity_type"] == "team"
        and a["data"]["entity_id"] != "gone"
        and a["data"]["state"] == "at_risk"
    ]
    assert others == []


def test_payment_failures_raise_involuntary_churn_risk():
    payer = TeamSpec("card", 5, payment_failures=(70, 73))
    _, alerts = run(stream([*healthy_teams(20), payer], days=90))
    at_risk = team_alerts(alerts, "card", "at_risk")
    assert at_risk and at_risk[0]["data"]["signal"] == "payment_failure"
    # a second failed payment is a fact, not a noisy measurement: at risk the same day
    assert day_of(at_risk[0]) == 73


def test_recovery_after_a_dip_emits_one_recovered_alert_and_cooldown():
    dip = TeamSpec("dip", 10, level=lambda d: 0.1 if 60 <= d < 74 else 1.0)
    engine, alerts = run(stream([*healthy_teams(25), dip], days=120))
    states = [a["data"]["state"] for a in team_alerts(alerts, "dip")]
    assert "at_risk" in states
    assert states[-1] == "recovered"
    assert engine.teams["dip"].health == hs.HEALTHY
    assert len(states) == len(set(states)), "one alert per state change"


def test_same_input_gives_identical_alerts():
    teams = [*healthy_teams(10), TeamSpec("q", 4, level=lambda d: 1.0 if d < 50 else 0.0)]
    _, first = run(stream(teams, days=80, seed=3))
    _, second = run(stream(teams, days=80, seed=3))
    assert first == second and first


def test_out_of_order_within_lateness_gives_the_same_alerts():
    teams = [*healthy_teams(10), TeamSpec("q", 4, level=lambda d: 1.0 if d < 50 else 0.0)]
    events = list(stream(teams, days=80, seed=3))
    shuffled = list(events)
    # swap neighbours that are less than 30 minutes apart: still inside the allowed lateness
    for i in range(0, len(shuffled) - 1, 2):
        if shuffled[i + 1].ts_ms - shuffled[i].ts_ms < 30 * 60_000:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    assert shuffled != events
    _, in_order = run(events)
    _, disordered = run(shuffled)
    assert sorted(a["id"] for a in in_order) == sorted(a["id"] for a in disordered)


def test_late_and_future_events_are_rejected_with_reasons():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    t0 = START_DAY * DAY_MS + 12 * HOUR_MS
    ok = Event("a", "feature.used", t0, "u", "t", {"feature": "x"})
    assert engine.process(ok) is None
    late = engine.process(ok._replace(event_id="b", ts_ms=t0 - 3 * HOUR_MS))
    assert late is not None and late.reason == "late"
    future = engine.process(ok._replace(event_id="c", ts_ms=t0 + 400 * DAY_MS))
    assert future is not None and future.reason == "future_timestamp"
    assert engine.watermark.value == t0 - 2 * HOUR_MS
    assert engine.stats.invalid == {"late": 1, "future_timestamp": 1}


def test_idle_clock_advance_flags_silence_in_live_mode():
    engine, _ = run(stream(healthy_teams(3, users=5), days=60))
    alerts: list[dict] = []
    for _ in range(30 * 24):  # thirty idle days, an hour at a time
        engine.advance_idle(HOUR_MS)
        alerts.extend(engine.drain_alerts())
    assert {
        a["data"]["entity_id"]
        for a in alerts
        if a["data"]["state"] == "at_risk" and a["data"]["entity_type"] == "team"
    } == {"h0", "h1", "h2"}


def test_vacation_of_a_one_person_team_is_not_at_risk():
    away = TeamSpec("tiny", 1, level=lambda d: 0.0 if 70 <= d < 80 else 1.0)
    _, alerts = run(stream([*healthy_teams(20), away], days=110))
    assert team_alerts(alerts, "tiny", "at_risk") == []


def _trial_alerts(settings: EngineSettings) -> list[dict]:
    """The at-risk alerts of a trial that starts on day 40 with one short session."""
    engine = PartitionEngine(settings, clock=lambda: 0.0)
    events = list(stream(healthy_teams(20), days=60))
    t_start = (START_DAY + 40) * DAY_MS + 10 * HOUR_MS
    events.append(Event("trial", "trial.started", t_start, None, "trial-team", {"plan": "trial"}))
    events.append(Event("s1", "session.started", t_start + 60_000, "tu", "trial-team", {}))
    events.append(
        Event("s2", "session.ended", t_start + 120_000, "tu", "trial-team", {"duration_s": 60.0})
    )
    events.sort(key=lambda e: e.ts_ms)
    alerts = []
    for ev in events:
        engine.process(ev)
        alerts.extend(engine.drain_alerts())
    return team_alerts(alerts, "trial-team", "at_risk")


def test_trial_that_never_activates_is_flagged_early():
    flagged = _trial_alerts(EngineSettings())
    assert flagged and flagged[0]["data"]["signal"] == "onboarding"
    codes = {r["code"] for r in flagged[0]["data"]["reasons"]}
    assert {"few_active_days", "no_key_action", "short_first_session"} <= codes
    assert day_of(flagged[0]) <= 40 + 10


def test_a_key_action_nobody_performs_is_not_held_against_a_trial():
    """The configured key action type never occurs in the stream (not instrumented, or named
    otherwise): a new team without it is judged on its other red flags only."""
    flagged = _trial_alerts(EngineSettings(key_action_types=("report.exported",)))
    assert flagged and flagged[0]["data"]["signal"] == "onboarding"
    codes = {r["code"] for r in flagged[0]["data"]["reasons"]}
    assert {"few_active_days", "short_first_session"} <= codes
    assert "no_key_action" not in codes


def test_sharp_drop_is_flagged_within_days_with_its_reason():
    drop = TeamSpec("drop", 20, level=lambda d: 1.0 if d < 62 else 0.1)  # day 62 is a Monday
    _, alerts = run(stream([*healthy_teams(25), drop], days=90))
    first = team_alerts(alerts, "drop", "at_risk")[0]
    assert day_of(first) <= 62 + 5, "a drop to a tenth is clear after a few working days"
    assert "sharp_drop" in {r["code"] for r in first["data"]["reasons"]}


def test_weekend_is_not_a_sharp_drop():
    engine = PartitionEngine(EngineSettings(sharp_drop_days=2), clock=lambda: 0.0)
    for ev in stream(healthy_teams(20, users=30), days=60):
        engine.process(ev)
    team = engine.teams["h0"]
    sunday = START_DAY + 59  # (START_DAY + 59 + 3) % 7 == 6; weekends run at 15 %
    signals: list = []
    engine._sharp_drop(team, sunday, team.window(sunday, 2), signals)
    assert signals == [], "the population's weekday rhythm makes a quiet weekend expected"


def _publishing_stops() -> tuple[PartitionEngine, list[dict]]:
    """Team "k" stops the key action on day 50; its activity goes on."""
    stop = (START_DAY + 50) * DAY_MS
    events = [
        ev._replace(type="feature.used")
        if ev.team_id == "k" and ev.type == "document.published" and ev.ts_ms >= stop
        else ev
        for ev in stream([*healthy_teams(20), TeamSpec("k", 10)], days=80)
    ]
    return run(events)


def test_key_action_stopped_alone_is_weak_evidence():
    engine, alerts = _publishing_stops()
    assert team_alerts(alerts, "k") == [], "a publishing pause alone raises no alert"
    team = engine.teams["k"]
    signals: list = []
    engine._key_action(team, team.windows(team.last_scored_day, (14,)), 1.0, 1.0, signals)
    assert [(s.name, s.strength) for s in signals] == [("key_action_stopped", 0.3)]


def test_team_quieter_than_others_in_a_holiday_is_not_decaying_after_it():
    holiday = lambda d: 0.4 if 70 <= d < 77 else 1.0  # noqa: E731
    teams = [TeamSpec(f"h{i}", 8, level=holiday) for i in range(30)]
    teams.append(TeamSpec("deep", 20, level=lambda d: 0.1 if 70 <= d < 77 else 1.0))
    _, alerts = run(stream(teams, days=95))
    assert team_alerts(alerts, "deep") == [], "the two-week window still holds the holiday"


def test_a_user_back_after_months_unchecked_keeps_a_small_open_days_mask():
    """The open-days bitmask spans the days not closed yet, not the user's absence: a user
    whose checks had stopped (as when its team churned) and who is back after 70 days must
    still encode (orjson takes 64-bit ints; the worker's agent crashed on it)."""
    from detector.codec import decode_user, encode_user

    def event(n: int, day: int, user: str) -> Event:
        ts = (START_DAY + day) * DAY_MS + 10 * HOUR_MS
        return Event(f"e{n}", "feature.used", ts, user, "t", {"feature": "editor"})

    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    assert engine.process(event(0, 0, "regular")) is None
    assert engine.process(event(1, 0, "returning")) is None
    engine.users["returning"].check_day = -1  # no more checks: nothing settles it
    for day in range(1, 71):
        assert engine.process(event(day + 1, day, "regular")) is None
    assert engine.process(event(100, 70, "returning")) is None  # its day is still open
    user = engine.users["returning"]
    assert 0 < user.open_days.bit_length() <= 8
    assert decode_user(encode_user(user)).open_days == user.open_days


def test_key_action_stop_while_the_champion_is_away_adds_nothing():
    """The champion is usually who publishes: their absence is one piece of evidence."""
    engine, _ = _publishing_stops()
    team = engine.teams["k"]
    wins = team.windows(team.last_scored_day, (14,))
    away = Signal("champion_loss", 0.45, ())
    signals: list = [away]
    engine._key_action(team, wins, 1.0, 1.0, signals)
    assert signals == [away]


def test_team_east_of_utc_scores_a_day_only_once_the_population_has_closed_it():
    """Its local day ends before the UTC day does; scored then, the day's population factor
    is unknown and a holiday's first day would look like this team's own drop."""
    tokyo = Event(
        "tz", "team.updated", START_DAY * DAY_MS, None, "east", {"timezone": "Asia/Tokyo"}
    )
    events = [tokyo, *stream([*healthy_teams(20), TeamSpec("east", 6)], days=40)]
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    scored = 0
    for ev in events:
        assert engine.process(ev) is None
        team = engine.teams.get("east")
        if team is not None and team.last_scored_day >= team.first_day:
            closed = engine.population.closed_day
            assert closed is not None and team.last_scored_day <= closed
            scored = team.last_scored_day
    assert engine.teams["east"].offset_ms == 9 * HOUR_MS
    assert scored >= START_DAY + 35


def test_trial_that_starts_just_before_a_holiday_is_judged_after_it():
    """Onboarding counts a holiday's days as the share of a usual day they were."""
    holiday = lambda d: 0.3 if 61 <= d < 71 else 1.0  # noqa: E731
    teams = [TeamSpec(f"h{i}", 6, level=holiday) for i in range(30)]
    newcomer = TeamSpec("new", 3, level=lambda d: 0.0 if d < 60 or 61 <= d < 71 else 1.0)
    _, alerts = run(stream([*teams, newcomer], days=90))
    assert team_alerts(alerts, "new") == []


def _champion_story(rest_keeps_half: bool) -> tuple[str, list[dict], PartitionEngine]:
    """Team "c" loses its most active user on day 60; the others carry on, or slow down."""
    events = list(stream([*healthy_teams(20), TeamSpec("c", 8)], days=100))
    cut = (START_DAY + 60) * DAY_MS
    engine, _ = run(ev for ev in events if ev.ts_ms < cut)
    champion = engine.teams["c"].champion
    assert champion is not None

    def kept(ev: Event) -> bool:
        if ev.team_id != "c" or ev.ts_ms < cut:
            return True
        if ev.user_id == champion:
            return False
        return not rest_keeps_half or (int(str(ev.user_id)[-1]) + ev.ts_ms // DAY_MS) % 2 == 0

    engine, alerts = run(ev for ev in events if kept(ev))
    return champion, team_alerts(alerts, "c", "at_risk"), engine


def test_champion_away_while_the_rest_carry_on_is_not_at_risk():
    _, at_risk, _ = _champion_story(rest_keeps_half=False)
    assert at_risk == []


def test_a_champion_gone_for_good_is_followed_by_an_active_user_not_chosen_again():
    """Gone longer than a vacation while the team carries on: the team moved on. Chosen
    again as the most active user, the absent one would raise champion_loss anew."""
    gone, _, engine = _champion_story(rest_keeps_half=False)
    team = engine.teams["c"]
    assert team.champion is not None and team.champion != gone
    assert engine.users[team.champion].last_day >= START_DAY + 95
    # whoever is checked first after the dismissal: the absent user does not take it back
    team.champion, team.champion_rate = None, 0.0
    engine._check_user(gone, engine.users[gone], START_DAY + 99)
    assert team.champion is None


def test_champion_gone_and_the_rest_slowing_is_champion_loss():
    _, at_risk, _ = _champion_story(rest_keeps_half=True)
    assert at_risk and at_risk[0]["data"]["signal"] == "champion_loss"
    codes = [r["code"] for r in at_risk[0]["data"]["reasons"]]
    assert codes[:2] == ["champion_inactive", "rest_of_team_drop"]
    assert 60 < day_of(at_risk[0]) <= 80


def _team_falls(champion_first: bool) -> list[dict]:
    """Team "c" falls to a tenth from day 70; its champion went quiet on day 60, or with it."""
    events = list(stream([*healthy_teams(20), TeamSpec("c", 8)], days=100))
    engine, _ = run(ev for ev in events if ev.ts_ms < (START_DAY + 60) * DAY_MS)
    champion = engine.teams["c"].champion
    quiet_from = (START_DAY + (60 if champion_first else 70)) * DAY_MS
    fall = (START_DAY + 70) * DAY_MS

    def kept(ev: Event) -> bool:
        if ev.team_id != "c" or ev.ts_ms < min(quiet_from, fall):
            return True
        if ev.user_id == champion:
            return ev.ts_ms < quiet_from
        return ev.ts_ms < fall or (ev.ts_ms // DAY_MS + int(str(ev.user_id)[-1])) % 10 == 0

    _, alerts = run(ev for ev in events if kept(ev))
    return team_alerts(alerts, "c", "at_risk")


def test_a_team_that_falls_after_its_champion_went_quiet_is_named_champion_loss():
    at_risk = _team_falls(champion_first=True)
    assert at_risk and at_risk[0]["data"]["signal"] == "champion_loss"
    assert 70 < day_of(at_risk[0]) <= 80


def test_the_champion_going_quiet_first_is_remembered_until_they_are_back():
    """What names champion_loss when the team's fall is the stronger evidence (explain's
    ``cause``): kept while the champion is away, dropped when they are active again."""
    events = list(stream([*healthy_teams(20), TeamSpec("c", 8)], days=90))
    engine, _ = run(ev for ev in events if ev.ts_ms < (START_DAY + 60) * DAY_MS)
    champion = engine.teams["c"].champion
    away = range((START_DAY + 60) * DAY_MS, (START_DAY + 70) * DAY_MS)
    engine, _ = run(
        ev
        for ev in events
        if ev.ts_ms < away.stop and not (ev.user_id == champion and ev.ts_ms in away)
    )
    assert engine.teams["c"].champion_left_first
    engine, _ = run(ev for ev in events if not (ev.user_id == champion and ev.ts_ms in away))
    assert not engine.teams["c"].champion_left_first


def test_a_team_that_falls_with_its_champion_is_named_team_decay():
    at_risk = _team_falls(champion_first=False)
    assert at_risk and at_risk[0]["data"]["signal"] == "team_decay"


def test_small_team_silent_through_a_holiday_raises_no_alert_during_or_after_it():
    """How deep a team dips in a population-wide low says little about it: the low days are
    left out of its windows instead of being expected at the population's level."""
    holiday = lambda d: 0.3 if 70 <= d < 77 else 1.0  # noqa: E731
    teams = [TeamSpec(f"h{i}", 6, level=holiday) for i in range(30)]
    teams.append(TeamSpec("away", 3, level=lambda d: 0.0 if 70 <= d < 77 else 1.0))
    _, alerts = run(stream(teams, days=100))
    assert team_alerts(alerts, "away") == []


def test_team_that_stops_during_a_holiday_is_flagged_after_it():
    holiday = lambda d: 0.3 if 70 <= d < 77 else 1.0  # noqa: E731
    teams = [TeamSpec(f"h{i}", 6, level=holiday) for i in range(30)]
    teams.append(TeamSpec("gone", 6, level=lambda d: 1.0 if d < 72 else 0.05))
    _, alerts = run(stream(teams, days=100))
    flagged = team_alerts(alerts, "gone", "at_risk")
    assert flagged and day_of(flagged[0]) <= 84


def test_entities_silent_for_evict_after_days_are_dropped_and_a_returning_one_starts_over():
    settings = EngineSettings(evict_after_days=90)
    gone = TeamSpec("gone", 4, level=lambda d: 1.0 if d < 30 else 0.0)
    leaver = TeamSpec("mixed", 5, level=lambda d: 1.0)
    engine = PartitionEngine(settings, clock=lambda: 0.0)
    engine.track_changes()
    events = [
        e
        for e in stream([*healthy_teams(6), gone, leaver], days=160)
        if not (e.user_id == "mixed-u0" and e.ts_ms >= (START_DAY + 20) * DAY_MS)
    ]
    for ev in events:
        engine.process(ev)
    changed_teams, changed_users = engine.take_changes()

    # silent since day 30 (teams) / 20 (a user): gone by day 160 - 90, at a weekly clean-up
    assert "gone" not in engine.teams
    assert not [uid for uid in engine.users if uid.startswith("gone-")]
    assert "mixed-u0" not in engine.users and "mixed" in engine.teams
    assert {"gone", *(f"gone-u{u}" for u in range(4)), "mixed-u0"} <= changed_teams | changed_users
    assert all(u.team_id in engine.teams for u in engine.users.values())
    assert engine.teams["mixed"].users_regular == 4  # the dropped user no longer counts
    assert engine.stats.evicted == {"team": 1, "user": 5}

    back = events[-1]._replace(event_id="back", user_id="gone-u0", team_id="gone")
    assert engine.process(back) is None
    assert engine.teams["gone"].events_total == 1  # a new team, judged from scratch
    assert engine.teams["gone"].health == hs.NOT_ENOUGH_DATA


def test_eviction_off_keeps_every_entity():
    gone = TeamSpec("gone", 4, level=lambda d: 1.0 if d < 30 else 0.0)
    engine, _ = run(stream([*healthy_teams(3), gone], days=160), EngineSettings(evict_after_days=0))
    assert "gone" in engine.teams and engine.stats.evicted == {}


def test_a_clean_up_marks_the_teams_that_lost_users_as_changed():
    engine = PartitionEngine(EngineSettings(evict_after_days=90), clock=lambda: 0.0)
    engine.track_changes()
    for ev in stream([TeamSpec("mixed", 5)], days=95):
        if not (ev.user_id == "mixed-u0" and ev.ts_ms >= (START_DAY + 5) * DAY_MS):
            engine.process(ev)
    assert "mixed-u0" in engine.users  # silent since day 4: not 90 days yet
    engine.take_changes()

    engine._evict_silent(START_DAY + 100)

    # the team's counts changed: a restore must not read the ones of its previous record
    assert engine.take_changes() == ({"mixed"}, {"mixed-u0"})


def test_a_restore_recounts_team_users_and_drops_users_whose_team_is_gone():
    engine, _ = run(stream([TeamSpec("a", 6), TeamSpec("b", 3)], days=40))
    counts = {t: (team.users_regular, team.users_at_risk) for t, team in engine.teams.items()}
    engine.track_changes()
    engine.teams["a"].users_regular, engine.teams["a"].users_at_risk = 9, 4  # counted twice
    engine.users["ghost"] = UserState("gone-team", START_DAY)

    engine.reconcile_users()

    assert {t: (team.users_regular, team.users_at_risk) for t, team in engine.teams.items()} == (
        counts
    )
    assert "ghost" not in engine.users and engine.take_changes()[1] == {"ghost"}


def test_a_team_back_from_weeks_away_while_the_others_are_long_gone_is_taken_in():
    """Only teams active lately can confirm a jump in time: the long churned ones cannot."""
    events = [
        Event(
            f"{team}{d}",
            "feature.used",
            (START_DAY + d) * DAY_MS + 9 * HOUR_MS,
            f"u-{team}",
            team,
            {},
        )
        for team, days in (("gone1", range(10)), ("gone2", range(10)), ("back", range(60)))
        for d in days
    ]
    events.sort(key=lambda ev: ev.ts_ms)
    back = (START_DAY + 90) * DAY_MS
    events += [
        Event(f"r{m}", "feature.used", back + m * 20 * 60_000, "u-back", "back", {})
        for m in range(12)
    ]
    week = EngineSettings(max_future_skew_s=7 * 24 * 3600)  # back after 30 days: a jump
    engine = PartitionEngine(week, clock=lambda: 0.0)
    out = [engine.process(ev) for ev in events]
    rejected = [r.reason for r in out if r is not None]
    assert rejected == ["future_timestamp"] * 3  # the first hour back, then it is followed
    assert engine.watermark.max_seen is not None and engine.watermark.max_seen >= back


def test_users_and_a_team_back_after_churning_are_judged_again_and_recover():
    """A churned user was never checked again: back and active every day, it stayed
    churned, and the team with it (its users counted as decaying kept it at risk)."""

    def away(team: str, day: int) -> bool:  # team "a" is silent from day 30 to day 89
        return team == "a" and 30 <= day < 90

    events = [
        Event(
            f"{team}{u}-{d}",
            "feature.used",
            (START_DAY + d) * DAY_MS + 10 * HOUR_MS + u,
            f"{team}-u{u}",
            team,
            {},
        )
        for d in range(150)
        for team in "abcdefgh"
        for u in range(4)
        if not away(team, d)
    ]
    engine, alerts = run(events)
    assert team_alerts(alerts, "a", "churned") and team_alerts(alerts, "a", "recovered")
    assert engine.teams["a"].health == hs.HEALTHY and engine.teams["a"].users_at_risk == 0
    back = [a for a in alerts if a["data"]["entity_id"].startswith("a-u")]
    assert {a["data"]["entity_id"] for a in back if a["data"]["state"] == "recovered"} == {
        f"a-u{u}" for u in range(4)
    }
    assert all(engine.users[f"a-u{u}"].health == hs.HEALTHY for u in range(4))


def test_task_names_with_ids_in_them_are_kept_by_name_up_to_a_bound():
    """Free-form task names ("export-81723") made one entry each, inserted by a linear scan:
    40,000 in a day took 30 s. Past the bound, the day's tasks count as one neutral entry."""
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    t0 = START_DAY * DAY_MS + 9 * HOUR_MS
    for i in range(2_000):
        props = {"task": f"export-{i % 1_000}", "duration_s": 30.0}
        assert engine.process(Event(f"t{i}", "task.completed", t0 + i, "u", "t", props)) is None
    tasks = engine.teams["t"].open_tasks
    assert isinstance(tasks, list) and len(tasks) == 257
    assert tasks == sorted(tasks, key=lambda entry: (entry[0], entry[1]))
    assert sum(entry[2] for entry in tasks) == 2_000
    neutral = [entry for entry in tasks if entry[1] == ""]
    assert len(neutral) == 1 and neutral[0][2] == 2_000 - 2 * 256


def test_a_person_in_two_teams_counts_in_each_and_alerts_in_each_apart():
    """User ids are global in B2B products, workspaces many: the state of "u0" belonged to
    the first team that sent it, and the second team's activity went missing."""

    def user_id(team: str, user: int) -> str:  # u0..u2 are in teams "a" and "b" both
        return f"u{user}" if team in "ab" else f"{team}-u{user}"

    events = [
        Event(
            f"{team}{u}-{d}",
            "feature.used",
            (START_DAY + d) * DAY_MS + (9 if team == "a" else 10) * HOUR_MS + u,
            user_id(team, u),
            team,
            {},
        )
        for d in range(90)
        for team in ("a", "b", *(f"h{i}" for i in range(10)))
        for u in range(3)
        if team != "b" or d < 50  # in team "b" the three stop on day 50
    ]
    early, _ = run(events[: len(events) // 3])
    assert early.teams["a"].base_active == early.teams["b"].base_active > 2.5
    engine, alerts = run(events)
    users_b = [a for a in alerts if a["data"]["entity_type"] == "user"]
    assert {a["data"]["entity_id"] for a in users_b} == {"u0", "u1", "u2"}
    assert {a["data"]["team_id"] for a in users_b} == {"b"}
    assert team_alerts(alerts, "b", "at_risk") and not team_alerts(alerts, "a", "at_risk")
    assert engine.users["u0"].team_id == "a" and engine.users["u0\x1fb"].team_id == "b"
    ids = [a["id"] for a in alerts]
    assert len(ids) == len(set(ids))


def test_a_persons_second_team_state_is_kept_when_the_first_teams_is_dropped():
    """With its first team's state evicted, the person's next event in the second team made
    a new state there, and the old one, without events, raised false alerts."""
    settings = EngineSettings(evict_after_days=90)
    events = [
        Event(f"{team}{d}", "feature.used", (START_DAY + d) * DAY_MS + 9 * HOUR_MS, user, team, {})
        for d in range(200)
        for team, user in (("a", "u"), ("b", "u"), *((f"h{i}", f"h{i}-u") for i in range(10)))
        if team != "a" or d < 10  # in team "a" the person stops on day 10
    ]
    engine, alerts = run(events, settings)
    assert engine.stats.evicted.get("user", 0) >= 1 and "u" not in engine.users
    assert engine.users["u\x1fb"].last_day >= START_DAY + 198
    assert not [a for a in alerts if a["data"]["entity_id"] == "u" and a["data"]["team_id"] == "b"]


def _restored(engine: PartitionEngine) -> PartitionEngine:
    """A new engine from ``engine``'s encoded records, as a new owner of the partition."""
    fresh = PartitionEngine(engine.settings, clock=lambda: 0.0)
    codec.restore_partition(
        fresh,
        codec.encode_partition(engine, 0),
        {k: codec.decode_team(codec.encode_team(t)) for k, t in engine.teams.items()},
        {k: codec.decode_user(codec.encode_user(u)) for k, u in engine.users.items()},
    )
    return fresh


def test_a_jump_in_time_is_decided_alike_with_and_without_a_restore_before_it():
    """The teams that can confirm a jump are counted anew each time: a count kept from
    before a new team came was not in the records, so a restored engine decided otherwise."""
    t0 = START_DAY * DAY_MS
    head = [
        *(
            Event(f"a{d}", "session.started", t0 + d * DAY_MS + 9 * HOUR_MS, "ua", "A", {})
            for d in range(11)
        ),
        Event("jump1", "session.started", t0 + 110 * DAY_MS, "ua", "A", {}),  # past 90 days
        Event("b1", "session.started", t0 + 10 * DAY_MS + 8 * HOUR_MS, "ub", "B", {}),
    ]
    jump2 = Event("jump2", "session.started", t0 + 110 * DAY_MS + 2 * HOUR_MS, "ua", "A", {})
    outcomes = []
    for restore in (False, True):
        engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
        assert [engine.process(ev) is None for ev in head] == [True] * 11 + [False, True]
        if restore:
            engine = _restored(engine)
        rejected = engine.process(jump2)
        outcomes.append((rejected and rejected.reason, engine.watermark.max_seen))
    # two teams active lately: one team's candidates, an hour apart, do not confirm it
    assert outcomes == [("future_timestamp", t0 + 10 * DAY_MS + 9 * HOUR_MS)] * 2


def test_a_restore_in_summer_time_changes_nothing_when_it_ends():
    """The team moves to UTC+1 and back: the group it left must not come back from a
    restore with a day closed in summer, which held back the users' checks by a sweep."""
    start = (START_DAY + 212) * DAY_MS  # 2026-08-01
    events = [Event("tz", "team.updated", start, None, "a", {"timezone": "Europe/London"})]
    for hour in range(88 * 24):  # to 2026-10-28; summer time ends on 2026-10-25 at 01:00 UTC
        user = hour % 4
        if user != 1 or hour < 79 * 24:  # u1 goes quiet: its check of 2026-10-24 alerts
            events.append(
                Event(
                    f"e{hour}",
                    "session.started",
                    start + hour * HOUR_MS + 1000,
                    f"u{user}",
                    "a",
                    {},
                )
            )
    cut = 30 * 24  # a restore on 2026-08-31, in summer time

    runs = []
    for restore in (False, True):
        engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
        alerts, user_days = [], []
        for i, ev in enumerate(events):
            if restore and i == cut:
                assert engine.teams["a"].offset_ms == HOUR_MS
                engine = _restored(engine)
            engine.process(ev)
            alerts += [(i, a["id"]) for a in engine.drain_alerts()]
            user_days.append(engine.user_day_closed)
        runs.append((alerts, user_days, _records(engine)))

    assert runs[0] == runs[1]
    # u1's alert: at the first sweep of 2026-10-25 (UTC midnight, run 2 h later: lateness)
    assert [events[i].ts_ms for i, _ in runs[0][0]] == [
        (START_DAY + 297) * DAY_MS + 2 * HOUR_MS + 1000
    ]


def _records(engine: PartitionEngine) -> tuple[bytes, dict[str, bytes], dict[str, bytes]]:
    return (
        codec.encode_partition(engine, 0),
        {k: codec.encode_team(t) for k, t in sorted(engine.teams.items())},
        {k: codec.encode_user(u) for k, u in sorted(engine.users.items())},
    )


def test_entities_evicted_since_an_old_snapshot_are_dropped_again_at_the_restore():
    """A local snapshot older than the changelog's tombstones (compaction removes them after
    delete.retention.ms) brings evicted entities back: the restore drops what the last
    weekly clean-up dropped, marks them changed (their records are deleted again), and
    nothing is alerted about them."""
    settings = EngineSettings(evict_after_days=90)
    quiet = (START_DAY + 20) * DAY_MS  # t-u0 and team "gone" are quiet from day 20
    events = [
        e
        for e in stream([TeamSpec("t", 5), TeamSpec("gone", 3, level=lambda d: float(d < 20))], 260)
        if not (e.user_id == "t-u0" and quiet <= e.ts_ms < quiet + 126 * DAY_MS)
    ]
    # the snapshot: in the last active day of t-u0 and of team "gone", open in their records
    snap_at = next(i for i, e in enumerate(events) if e.ts_ms >= quiet - 11 * HOUR_MS)
    back_at = next(i for i, e in enumerate(events) if e.ts_ms >= (START_DAY + 145) * DAY_MS)
    whole = PartitionEngine(settings, clock=lambda: 0.0)
    for ev in events[:snap_at]:
        whole.process(ev)
    assert whole.users["t-u0"].open_days and whole.teams["gone"].open_days
    old = _records(whole)
    for ev in events[snap_at:back_at]:
        whole.process(ev)
    whole.drain_alerts()
    assert "t-u0" not in whole.users and "gone" not in whole.teams  # evicted since
    now = _records(whole)

    # the changelog compacted, its tombstones gone: the snapshot's records under the newer ones
    meta = now[0]
    teams = {k: codec.decode_team(v) for k, v in (old[1] | now[1]).items()}
    users = {k: codec.decode_user(v) for k, v in (old[2] | now[2]).items()}
    restored = PartitionEngine(settings, clock=lambda: 0.0)
    restored.track_changes()
    codec.restore_partition(restored, meta, teams, users)

    # deleted again (and t's record written again: its counts lost t-u0 again)
    assert restored.take_changes() == ({"gone", "t"}, {"t-u0", "gone-u0", "gone-u1", "gone-u2"})
    assert _records(restored) == now
    after = []
    for ev in events[back_at:]:
        whole.process(ev)
        restored.process(ev)
        after.append((whole.drain_alerts(), restored.drain_alerts()))
    assert all(a == b for a, b in after) and _records(restored) == _records(whole)
