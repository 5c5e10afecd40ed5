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
    for day in range(5):
        fill(pop, day, 10)
        for _ in range(100):
            pop.observe_task("import", 60.0, day)
    assert pop.task_ratio("import", 180.0, 1) == 1.0, "no norm before a day closes"
    pop.close_until(5)
    assert 2.9 < pop.task_ratio("import", 180.0, 1) < 3.1
    assert 5.9 < pop.task_ratio("import", 360.0, 2) < 6.1  # two tasks, each three times the norm


def test_task_norm_learns_a_day_the_same_in_any_order():
    durations = [5.0, 50.0, 500.0, 7.5, 75.0] * 20
    norms = []
    for order in (durations, sorted(durations), durations[::-1]):
        pop = Population(min_days=7)
        fill(pop, 0, 10)
        for d in order:
            pop.observe_task("export", d, 0)
        pop.close_until(1)
        norms.append(pop.task_log_norm["export"])
    assert norms[0] == norms[1] == norms[2]


def test_a_partition_with_few_teams_is_not_a_population():
    pop = Population(min_days=7)
    for day in range(28):
        fill(pop, day, 100 if day < 20 else 0, teams=3 if day < 20 else 0)
    pop.close_until(28)
    assert pop.day_factor(25) == 1.0, "one silent team must not look like an outage"


def test_the_first_day_is_the_earliest_even_when_a_later_day_is_counted_first():
    """Out-of-order delivery: the first close (a sweep during day 0) comes after an event of
    day 1; the day-0 events delivered after it still start the population on day 0."""
    in_order, reordered = Population(min_days=7), Population(min_days=7)
    fill(in_order, 0, 3)
    in_order.close_until(0)
    fill(in_order, 1, 1)
    fill(reordered, 1, 1)
    reordered.close_until(0)
    fill(reordered, 0, 3)
    for pop in (in_order, reordered):
        pop.close_until(2)
    assert in_order.first_day == reordered.first_day == 0
    assert in_order.weekday == reordered.weekday
    assert reordered.team_counts == {} and reordered.counts == {}
