"""Tests for detector.eval_report: a tiny hand-made evaluation rendered to HTML.

Days from T0 = 2026-01-01T00:00:00Z; the data runs from day 0 to day 39 (40 timeline days).

team      truth                                  events (login, one user)     team alerts
t_churn   churned d30, decay from d20, decay     d0..d19 daily, u1 and u2     cooling d15, at_risk d22
          scenario "team_decay"                  (two users on d0)            and d25, churned d35
t_fa      healthy                                d0..d39 every 3 days          at_risk d10
t_ok      healthy                                d0..d39 every 2 days          none
"""

from __future__ import annotations

import random
import re
from html.parser import HTMLParser
from typing import Any

import orjson
import pytest

from detector.cli import main
from detector.eval_report import (
    TL_LEFT,
    TL_PLOT_W,
    DailyActivity,
    index_inputs,
    pick_timelines,
    render_html,
    risk_curve,
)
from detector.evaluation import DAY_MS, evaluate, format_time_ms, parse_time_ms

T0 = parse_time_ms("2026-01-01T00:00:00Z")
HOSTILE = '<img src=x onerror="alert(1)">&amp;'
N_DAYS = 40


def at(day: float) -> int:
    return T0 + round(day * DAY_MS)


def ev(day: float, user: str, team: str, type_: str = "login") -> dict[str, Any]:
    return {"type": type_, "timestamp": format_time_ms(at(day)), "user_id": user, "team_id": team}


def alert(team: str, day: float, state: str, risk: float = 0.8) -> dict[str, Any]:
    return {
        "id": f"{team}-{day}-{state}",
        "data": {
            "entity_type": "team",
            "entity_id": team,
            "signal": "team_decay",
            "state": state,
            "risk_score": risk,
            "event_time": format_time_ms(at(day)),
        },
    }


def make_events(churn: str = "t_churn") -> list[dict[str, Any]]:
    events = [ev(d, "u1", churn) for d in range(20)] + [ev(0.5, "u2", churn)]
    events += [ev(d, "u3", "t_fa") for d in range(0, N_DAYS, 3)]
    events += [ev(d, "u4", "t_ok") for d in range(0, N_DAYS, 2)]
    events.append(ev(39, "u4", "t_ok", "payment.succeeded"))  # not activity, ends the data
    return events


def make_alerts(churn: str = "t_churn") -> list[dict[str, Any]]:
    return [
        alert(churn, 15, "cooling", 0.5),
        alert(churn, 22, "at_risk", 0.9),
        alert(churn, 25, "at_risk", 0.95),
        alert(churn, 35, "churned", 1.0),
        alert("t_fa", 10, "at_risk", 0.7),
    ]


def make_truth(churn: str = "t_churn") -> list[dict[str, Any]]:
    rows = [
        {
            "entity_type": "team",
            "entity_id": churn,
            "churned": True,
            "decay_start": format_time_ms(at(20)),
            "churned_at": format_time_ms(at(30)),
            "scenario": "team_decay",
        },
        {"entity_type": "team", "entity_id": "t_fa", "churned": False, "scenario": "healthy"},
        {"entity_type": "team", "entity_id": "t_ok", "churned": False, "scenario": "healthy"},
    ]
    rows += [
        {
            "entity_type": "user",
            "entity_id": u,
            "team_id": t,
            "churned": False,
            "scenario": "healthy",
        }
        for u, t in (("u3", "t_fa"), ("u4", "t_ok"))
    ]
    return rows


def build(
    events: list[dict[str, Any]], alerts: list[dict[str, Any]], truth: list[dict[str, Any]]
) -> str:
    inputs = index_inputs(truth, alerts)
    picks = pick_timelines(inputs)
    activity = DailyActivity(p.team_id for p in picks)
    report = evaluate(activity.tap(events), alerts, truth)
    return render_html(report, inputs, picks, activity)


class Tags(HTMLParser):
    """Records start tags with their attributes and checks that elements nest properly."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.starts if name == tag]


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    assert tags.stack == [], f"unclosed elements: {tags.stack}"
    return tags


@pytest.fixture(scope="module")
def page() -> str:
    return build(make_events(), make_alerts(), make_truth())


def test_page_parses_with_one_svg_per_plot(page):
    tags = parse(page)
    svgs = [a["aria-label"] for a in tags.all("svg")]
    per_level = ["precision-recall", "per-scenario share flagged", "lead-time histogram"]
    expected = [f"{level} {plot}" for level in ("team", "user") for plot in per_level]
    expected += [f"timeline of team {t}" for t in ("t_churn", "t_fa", "t_ok")]
    assert svgs == expected


def test_page_is_self_contained(page):
    tags = parse(page)
    assert not tags.all("script") and not tags.all("link") and not tags.all("img")
    assert all("src" not in attrs and "href" not in attrs for _, attrs in tags.starts)
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"http://www.w3.org/2000/svg"}


def timeline(tags_page: str, team: str) -> str:
    start = tags_page.index(f'aria-label="timeline of team {team}"')
    return tags_page[start : tags_page.index("</svg>", start)]


def test_alert_markers_sit_at_their_day_with_state_colours(page):
    day_w = TL_PLOT_W / N_DAYS
    circles = parse(timeline(page, "t_churn")).all("circle")
    got = [(c["class"], float(c["cx"] or "nan"), c["r"]) for c in circles]
    assert got == [
        ("alert cooling", pytest.approx(TL_LEFT + 15 * day_w, abs=0.05), "4"),
        ("alert at_risk first", pytest.approx(TL_LEFT + 22 * day_w, abs=0.05), "7"),
        ("alert at_risk", pytest.approx(TL_LEFT + 25 * day_w, abs=0.05), "4"),
        ("alert churned", pytest.approx(TL_LEFT + 35 * day_w, abs=0.05), "4"),
    ]
    lines = {
        a["class"]: float(a["x1"] or "nan") for a in parse(timeline(page, "t_churn")).all("line")
    }
    assert lines["decay"] == pytest.approx(TL_LEFT + 20 * day_w, abs=0.05)
    assert lines["cancel"] == pytest.approx(TL_LEFT + 30 * day_w, abs=0.05)


def test_baseline_firings_sit_after_the_last_activity(page):
    day_w = TL_PLOT_W / N_DAYS
    polygons = parse(timeline(page, "t_churn")).all("polygon")
    tips = [float((p["points"] or "").split(",")[0]) for p in polygons]  # the apex
    assert tips == [pytest.approx(TL_LEFT + 33 * day_w, abs=0.05)]  # trailing gap d19 -> d33
    assert not parse(timeline(page, "t_ok")).all("polygon")


@pytest.mark.parametrize("seed", range(25))
def test_baseline_firings_agree_with_evaluate(seed):
    rng = random.Random(seed)
    days = sorted(rng.uniform(0, 60) for _ in range(rng.randint(1, 8)))
    events = [ev(d, "u1", "t") for d in days] + [ev(80, "u2", "other")]
    truth = [{"entity_type": "team", "entity_id": "t", "churned": True, "scenario": "s"}]
    truth[0]["churned_at"] = format_time_ms(at(rng.uniform(days[-1], 80)))
    activity = DailyActivity(["t"])
    report = evaluate(activity.tap(events), [], truth)
    churned_at = parse_time_ms(truth[0]["churned_at"])
    fired = [ms for ms in activity.inactivity_firings("t", 14 * DAY_MS, at(80)) if ms < churned_at]
    expected = [(churned_at - min(fired)) / DAY_MS] if fired else []
    assert report.lead_days["team"][report.baseline_name] == pytest.approx(expected)


def test_activity_bars_follow_the_events(page):
    bars = [a for a in parse(timeline(page, "t_churn")).all("rect") if a.get("class") == "ev"]
    assert len(bars) == 20  # one bar per active day d0..d19
    day_w = TL_PLOT_W / N_DAYS
    assert float(bars[-1]["x"] or "nan") == pytest.approx(TL_LEFT + 19 * day_w, abs=0.05)
    assert {a.get("class") for a in parse(timeline(page, "t_ok")).all("rect")} >= {"ev"}


def test_headings_say_caught_missed_or_false_alarm(page):
    text = " ".join(parse(page).text)
    assert "team_decay · caught · first at_risk 8.0 d before cancellation · baseline missed" in text
    assert "healthy · false alarm · 1 at_risk alert, baseline fired 0x" in text
    assert "healthy · healthy · 0 at_risk alerts, baseline fired 0x" in text


def test_hostile_ids_are_escaped():
    page = build(make_events(HOSTILE), make_alerts(HOSTILE), make_truth(HOSTILE))
    tags = parse(page)
    assert not tags.all("img")
    assert HOSTILE not in page
    assert f"team {HOSTILE}" in " ".join(tags.text)  # shown as text, exactly
    label = f"timeline of team {HOSTILE}"
    assert label in [a["aria-label"] for a in tags.all("svg")]


def test_output_is_deterministic_and_independent_of_input_order(page):
    events, alerts, truth = make_events(), make_alerts(), make_truth()
    rng = random.Random(3)
    rng.shuffle(events)
    rng.shuffle(alerts)
    rng.shuffle(truth)
    assert build(events, alerts, truth) == page


def test_pick_timelines_is_bounded_and_covers_every_scenario():
    truth, alerts = [], []
    for i in range(200):
        scenario = f"drop{i % 7}" if i < 120 else "healthy"
        row = {"entity_type": "team", "entity_id": f"t{i:03d}", "scenario": scenario}
        row |= {"churned": i < 120, "churned_at": format_time_ms(at(90))}
        truth.append(row)
        if i % 3 == 0:
            alerts.append(alert(f"t{i:03d}", 50, "at_risk"))
    picks = pick_timelines(index_inputs(truth, alerts), limit=40)
    assert len(picks) == 40 == len({p.team_id for p in picks})
    categories = [p.category for p in picks]
    assert categories.count("false alarm") == 10 and categories.count("healthy") == 6
    scenarios = {int(p.team_id[1:]) % 7 for p in picks if p.category in ("caught", "missed")}
    assert scenarios == set(range(7))


def test_daily_activity_counts_only_chosen_teams_and_activity():
    activity = DailyActivity(["a"])
    events = [
        ev(0, "u1", "a"),
        ev(0.5, "u1", "a"),
        ev(0.7, "u2", "a"),
        ev(1, "u1", "a", "subscription.cancelled"),  # not activity
        ev(2, "u9", "b"),  # not chosen
        {"type": "login", "timestamp": "garbage", "user_id": "u1", "team_id": "a"},
        "not a dict",
    ]
    assert list(activity.tap(events)) == events
    assert activity.series("a", T0 // DAY_MS, 3) == ([3, 0, 0], [2, 0, 0])
    assert activity.series("b", T0 // DAY_MS, 3) == ([0, 0, 0], [0, 0, 0])


def test_cli_writes_the_report_next_to_the_tables(tmp_path, capsys):
    paths = {}
    for name, rows in (
        ("events", make_events()),
        ("alerts", make_alerts()),
        ("truth", make_truth()),
    ):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = tmp_path / "report.html"
    args = ["evaluate", "--report", str(out)]
    args += [x for name, path in paths.items() for x in (f"--{name}", str(path))]
    assert main(args) == 0
    assert "TEAM level" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == build(make_events(), make_alerts(), make_truth())


def test_empty_inputs_still_render_every_plot():
    tags = parse(build([], [], []))
    assert len(tags.all("svg")) == 6  # three plots per level, no timelines
    assert "none" in " ".join(tags.text)  # empty tables say so


def test_summary_shows_the_lead_context_and_the_population_lows(page):
    text = "".join(parse(page).text)
    assert "lead context: an oracle alerting the day each decline began" in text
    assert "oracle median days" in text and "paired detector median days" in text
    assert "detector tp before decay start" in text
    # the decay-start oracle is no bound: a first alert before the decline has a longer lead
    assert "not a bound" in text and "most lead" not in text and "bound median" not in text
    assert "warnings on healthy entities in and after population-wide lows" in text


def svg_of(page: str, label: str) -> str:
    start = page.index(f'aria-label="{label}"')
    return page[start : page.index("</svg>", start)]


def test_precision_recall_curve_counts_only_the_entities_evaluate_scored():
    """A churned team in the truth without events has alerts (risk scores) but is not scored:
    counting it would push the curve's recall above the level's denominator."""
    truth = [
        *make_truth(),
        {
            "entity_type": "team",
            "entity_id": "t_ghost",
            "churned": True,
            "churned_at": format_time_ms(at(30)),
            "scenario": "team_decay",
        },
    ]
    alerts = [*make_alerts(), alert("t_ghost", 20, "at_risk", 0.99)]
    inputs = index_inputs(truth, alerts)
    report = evaluate(make_events(), alerts, truth)
    assert report.levels["team"].detector.churned == 1
    curve = risk_curve(inputs, "team", 1, report.scored["team"])
    assert [(risk, recall) for risk, recall, _ in curve] == [(0.95, 1.0), (0.7, 1.0)]
    points = parse(svg_of(build(make_events(), alerts, truth), "team precision-recall")).all(
        "polyline"
    )[0]["points"]
    xs = [float(point.split(",")[0]) for point in (points or "").split()]
    assert max(xs) <= 48 + 300  # recall 1 sits at the right edge of the plot


def test_scenario_bars_show_false_alarms_of_a_scenario_that_also_churns():
    """Without ``scenario`` in the truth, every team is "unknown": churned and healthy."""
    truth = [{k: v for k, v in row.items() if k != "scenario"} for row in make_truth()]
    bars = svg_of(build(make_events(), make_alerts(), truth), "team per-scenario share flagged")
    labels = [t for t in parse(bars).text if t.startswith("unknown")]
    assert labels == ["unknown (caught)", "unknown (false alarm)"]
    tips = re.findall(r"<title>([^<]*)</title>", bars)
    assert tips == [
        "detector: 1/1",
        "baseline_inactive_14d: 0/1",
        "detector: 1/2",  # t_fa of the two healthy teams
        "baseline_inactive_14d: 0/2",
    ]


def test_churned_false_as_a_string_is_not_churned():
    truth = make_truth()
    truth[1] = truth[1] | {"churned": "false"}
    row = index_inputs(truth, []).team("t_fa")
    assert row is not None and not row.churned
    truth[1] = truth[1] | {"churned": "no"}
    with pytest.raises(ValueError, match=r"^truth record 2: churned must be true or false"):
        index_inputs(truth, [])


def test_a_user_of_two_teams_keeps_its_alerts_per_team():
    truth = [
        *make_truth(),
        {"entity_type": "user", "entity_id": "u3", "team_id": "t_ok", "churned": False},
    ]
    alerts = [
        {"id": "x", "data": {"entity_type": "user", "entity_id": "u3", "team_id": "t_ok",
                             "state": "at_risk", "risk_score": 0.6,
                             "event_time": format_time_ms(at(5))}}
    ]  # fmt: skip
    inputs = index_inputs(truth, alerts)
    assert inputs.max_risk == {("user", "t_ok", "u3"): 0.6}


def test_list_values_are_joined_in_the_tables(page):
    assert "<td>[]</td>" not in page and "<td>[" not in page
    low = build(
        [
            ev(d + 0.5, f"u{i}", f"t{i}")
            for d in range(30)
            for i in range(10)
            if d not in (10, 11) or i < 2
        ],
        [],
        [
            {"entity_type": "team", "entity_id": f"t{i}", "churned": False, "scenario": "s"}
            for i in range(10)
        ],
    )
    assert "<td>team</td><td>2026-01-11, 2026-01-12</td>" in low
