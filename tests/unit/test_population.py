from __future__ import annotations

from detector.population import Population
from detector.timemodel import DAY_MS


def fill(pop: Population, day: int, n: int, teams: int = 20) -> None:
    for _ in range(n):
        pop.count(day * DAY_MS + 1000)
    for _ in range(teams):
        pop.count_team(day * DAY_MS + 1000)


def test_holiday_lowers_the_day_factor_and_barely_teaches_the_baseline():
    pop = Population(min_days=7)
    for day in range(28):
        fill(pop, day, 100)
    for day in range(28, 35):
        fill(pop, day, 30)
    pop.close_until(35)
    assert pop.day_factor(30) < 0.35
    assert pop.window_factor(34, 7) < 0.35
    fill(pop, 35, 100)
    pop.close_until(36)
    assert 0.95 < pop.day_factor(35) < 1.1, "the holiday must barely lower the baseline"


def test_a_lasting_drop_of_the_population_becomes_its_new_normal():
    """Big teams leaving is not a holiday: within about two months the smaller level is normal again."""
    pop = Population(min_days=7)
    for day in range(28):
        fill(pop, day, 100)
    for day in range(28, 84):
        fill(pop, day, 50)
    pop.close_until(84)
    assert pop.day_factor(30) < 0.6
    assert pop.window_factor(83, 7) > 0.8  # about eight weeks later


def test_effective_days_discount_a_tracking_outage():
    pop = Population(min_days=7)
    for day in range(30):
        fill(pop, day, 5 if day == 20 else 100)
    pop.close_until(30)
    assert pop.tracking_gap(20, 0.5)
    assert 9.0 < pop.effective_days(15, 24) < 9.1


def test_task_norm_scales_durations():
    pop = Population(min_days=7)
    for _ in range(500):
        pop.observe_task("import", 60.0)
    assert 2.5 < pop.observe_task("import", 180.0) < 3.5


def test_a_partition_with_few_teams_is_not_a_population():
    pop = Population(min_days=7)
    for day in range(28):
        fill(pop, day, 100 if day < 20 else 0, teams=3 if day < 20 else 0)
    pop.close_until(28)
    assert pop.day_factor(25) == 1.0, "one silent team must not look like an outage"
