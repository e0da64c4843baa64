import pytest

from arcfast.budget.clock import Deadline, format_duration, parse_duration
from arcfast.budget.steps import StepPlanner


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("text,seconds", [
    ("11h", 39600), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("2.5m", 150),
    ("600", 600), (45, 45), ("1d", 86400), ("10 min", 600), ("3H", 10800),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "abc", "10x", "-5m", "0", "1h-3m"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(42) == "42s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 7 * 60) == "3h07m"


def test_deadline_margin_and_remaining():
    clock = FakeClock()
    d = Deadline(1000, clock=clock)
    assert d.margin == pytest.approx(30)  # 3% of 1000 s
    assert d.remaining() == pytest.approx(970)
    clock.t += 900
    assert d.remaining() == pytest.approx(70)
    assert not d.expired()
    clock.t += 80
    assert d.expired()
    assert Deadline(60, clock=clock).margin == 10.0       # floor
    assert Deadline(86400, clock=clock).margin == 300.0   # cap


def test_planner_divides_time_left_over_groups():
    clock = FakeClock()
    d = Deadline(1000, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=10_000, groups=[8, 8, 8, 8])
    assert p.steps_for_next_group() == 10_000   # nothing measured yet: the recipe's count
    p.record(2.0, steps=4)                       # 0.5 s / step
    assert p.steps_for_next_group() == 500       # 1000 s / 4 groups / 0.5 s
    clock.t += 250
    p.group_done()
    assert p.steps_for_next_group() == 500       # 750 s / 3 groups / 0.5 s
    p.max_steps = 100
    assert p.steps_for_next_group() == 100


def test_planner_reserves_inference_and_stops_at_deadline():
    clock = FakeClock()
    d = Deadline(100, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=1000, groups=[4, 4])
    p.record_inference(16.0, tasks=4)            # 4 s per task, kept with a 1.25 safety: 5 s
    p.record(1.0)
    assert p.inference_reserve() == pytest.approx(40)
    assert p.steps_for_next_group() == 30       # (100 - 8 tasks * 5 s) / 2 / 1 s
    clock.t += 61
    assert p.steps_for_next_group() == 0        # 39 s left, 40 s reserved
    assert p.may_step() is False
    assert p.inference_seconds() == pytest.approx(19)   # 39 s less the second group's 20 s
    p.group_done()
    assert p.inference_reserve() == pytest.approx(20) and p.may_step() is True
    clock.t += 19
    assert p.may_step() is False


def test_planner_recomputes_every_reservation_when_the_groups_change():
    # One group of 6 tasks split into 6 groups of one (out of memory) before any inference was
    # measured: the reservations follow the new plan instead of the 6-fold of the old share.
    clock = FakeClock()
    d = Deadline(120, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=1000, groups=[6], inference_share=1 / 3)
    p.record(0.1)
    assert p.steps_for_next_group() == 800     # (120 - 40 s of inference) / 1 group / 0.1 s
    p.plan([1] * 6)
    assert p.inference_reserve() == pytest.approx(40)          # still a third of the time left
    assert p.steps_for_next_group() == 133                      # 80 s / 6 groups / 0.1 s
    assert p.may_step()
    clock.t += 13.3                                             # the first group trains its steps
    assert p.may_step()
    # The first group may infer with all that is left but the five later tasks' 40/6 s each.
    assert p.inference_seconds() == pytest.approx(120 - 13.3 - 5 * 40 / 6)
    p.group_done()
    assert p.groups == [1] * 5 and p.groups_done == 1


def test_the_inference_share_does_not_shrink_while_the_first_group_trains():
    # Nothing measured: 1/3 of the 90 s left at the start is kept for the 4 tasks' inference,
    # and it stays 30 s however long the first group trains.
    clock = FakeClock()
    d = Deadline(90, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=1000, groups=[2, 2], inference_share=1 / 3)
    assert p.inference_reserve() == pytest.approx(30)
    clock.t += 50
    assert p.inference_reserve() == pytest.approx(30) and p.inference_seconds() == pytest.approx(40 - 15)


def test_a_group_planned_blind_stops_at_its_share_of_the_time():
    # No step measured: the first group is given the recipe's steps, but not more than its share
    # of the time (times the slack): the second group keeps its own share.
    clock = FakeClock()
    d = Deadline(100, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=1000, groups=[2, 2], inference_share=0.2, share_slack=1.0)
    assert p.steps_for_next_group() == 1000         # (100 - 20 s of inference) / 2 groups = 40 s each
    steps = 0
    while p.may_step():
        clock.t += 1.0
        p.record(1.0)
        steps += 1
    assert steps == 40                              # at 40 s the 41st step would pass the 40 s share
    p.group_done()                                  # (its inference, 10 s, not simulated here)
    assert p.steps_for_next_group() == 50 and p.may_step()   # 60 s left less its own 10 s of inference


def test_planner_refuses_an_empty_group():
    with pytest.raises(ValueError, match="at least one task"):
        StepPlanner(Deadline(10), max_steps=1, groups=[2, 0])


def test_process_start_counts_what_ran_before_the_call():
    import subprocess
    import sys

    code = ("import time; time.sleep(0.6); import arcfast.budget.clock as b; "
            "print(time.monotonic() - b.process_start())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.6 <= age < 30


def test_margin_flag_is_checked(tmp_path, capsys):
    from arcfast.cli import main

    assert main(["ttft", "--budget", "5s", "--margin", "10s", "--out", str(tmp_path / "a"), "-q"]) == 2
    assert "leaves nothing of --budget" in capsys.readouterr().err


def test_the_next_groups_are_planned_at_the_machines_recent_pace():
    """Steps of 0.5 s for a while, then the machine slows to 2 s a step (another process started):
    the next group is planned at the slow pace at once, not at a run-long mean."""
    clock = FakeClock()
    d = Deadline(1000, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=10_000, groups=[4, 4, 4])
    for _ in range(20):
        p.record(0.5)
    assert p.steps_for_next_group() == int(1000 / 3 / 0.5)
    p.group_done()
    p.record(2.0)
    assert p.step_time == pytest.approx(2.0)
    assert p.steps_for_next_group() == int(1000 / 2 / 2.0)
    assert p.step_seconds() > 2.0          # and a step is admitted with a wider margin


def test_each_later_group_is_owed_its_measured_overhead():
    """Saving adapters and writing results take time per group: once measured, each group still
    to run is owed it, and the current group's training share shrinks by as much."""
    clock = FakeClock()
    d = Deadline(100, margin=0, clock=clock)
    p = StepPlanner(d, max_steps=10_000, groups=[2, 2, 2])
    p.record(1.0)
    assert p.steps_for_next_group() == 33               # 100 s / 3 groups / 1 s
    p.record_group_overhead(6.0)
    assert p.reserve_after_current() == pytest.approx(12.0)
    assert p.steps_for_next_group() == 27               # (100 - 3 x 6 s) / 3 / 1 s


def test_fits_and_how_many_carry_the_one_safety_factor():
    from arcfast.budget.clock import DEADLINE_SAFETY, fits, how_many

    assert fits(100.0, 10.0, 100.0 + 10.0 * DEADLINE_SAFETY)
    assert not fits(100.0, 10.0, 100.0 + 10.0 * DEADLINE_SAFETY - 1e-6)
    assert how_many(0.0, 1.0, 10 * DEADLINE_SAFETY + 0.5) == 10
    assert how_many(5.0, 1.0, 4.0) == 0 and how_many(0.0, 1.0, 0.9) == 0


def test_inference_rates_keep_what_the_groups_measured():
    from arcfast.budget.clock import InferenceRates

    r = InferenceRates()
    assert r.scoring_rate() is None and r.scoring_rate(2e-3) == 2e-3   # unmeasured: the prefill's
    assert r.after_generation(4, rescore=True, verify=True) == 0.0
    r.record_rescore(8.0, 4, 1e-3)
    r.record_rescore(2.0, 4, 0.0)          # a call that scored nothing keeps the last rate
    r.record_verify(12.0, 4)
    assert r.scoring_rate(2e-3) == 1e-3
    assert r.after_generation(2, rescore=True, verify=False) == 4.0    # the most per task, x2
    assert r.after_generation(2, rescore=True, verify=True) == 10.0
