"""The progress view of a phase, driven with fake trials as Ray calls its callback: counts by
state, the best value per arm, the time left, plain lines off a terminal and a block redrawn
in place on one. And a crashed sweep closes its runs."""

import io
import itertools
import logging
import pickle
import statistics
from types import SimpleNamespace

import pytest

from sweep.callbacks import Progress, SweepProgress
from sweep.console import quiet_ray_notices
from sweep.progress import RUNNING, estimate_remaining, final_line, live_lines, trial_line
from trainables import contract
from trainables.edge.trial import DIVERGED_KEY

METRIC = "best_val_macro_f1"
_ids = itertools.count()


def _trial(status, iteration=0, value=None, arm="focal", seconds=None, **extra):
    result = {"training_iteration": iteration, **extra}
    if value is not None:
        result[METRIC] = value
    if seconds is not None:
        result["time_total_s"] = seconds
    return SimpleNamespace(
        trial_id=f"t{next(_ids)}", status=status, last_result=result, config={"arm": arm}
    )


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(total=6, mode="max", **kwargs):
    kwargs.setdefault("clock", Clock())
    return Progress("search", total, METRIC, mode, 4, quiet=False, **kwargs)


def test_every_trial_is_counted_once_by_its_state():
    trials = [
        _trial("TERMINATED", 4, 0.8),
        _trial("TERMINATED", 2, 0.6),  # stopped early by ASHA
        _trial("TERMINATED", 1, 0.99, **{DIVERGED_KEY: 1}),
        _trial("ERROR", 1, 0.5),
        _trial("RUNNING", 4, 0.85),  # just ended: Ray updates its status after the callbacks
        _trial("RUNNING", 1, 0.7),
        _trial("PENDING"),
    ]
    snap = _progress(total=9).snapshot(trials, trials[4], contract.COMPLETED)
    assert snap.counts == {
        "pending": 3,  # one created, two the searcher has not created yet
        RUNNING: 1,
        contract.COMPLETED: 2,
        contract.STOPPED_EARLY: 1,
        contract.DIVERGED: 1,
        contract.FAILED: 1,
    }
    assert (snap.done, snap.running, snap.total) == (5, 1, 9)
    assert sum(snap.counts.values()) == snap.total


def test_the_last_trial_to_end_leaves_none_running(capsys):
    # The trial that ends is still RUNNING in Ray's list: counted once, as done.
    trials = [_trial("TERMINATED", 4, 0.8, seconds=10), _trial("RUNNING", 4, 0.9, seconds=10)]
    progress = _progress(total=2, live=False)
    progress.on_trial_complete(0, trials, trials[1])
    snap = progress.snapshot(trials, trials[1], contract.COMPLETED)
    assert (snap.done, snap.running) == (2, 0)
    trials[1].status = "TERMINATED"
    progress.on_experiment_end(trials)
    assert capsys.readouterr().out == (
        "[search] 2/2 trials done in 0:00; best val_macro_f1 focal 0.9000\n"
    )


@pytest.mark.parametrize("mode, expected", [("max", (0.9, 0.7)), ("min", (0.6, 0.65))])
def test_best_per_arm_follows_the_mode_and_skips_what_diverged(mode, expected):
    trials = [
        _trial("TERMINATED", 4, 0.6, arm="focal"),
        _trial("RUNNING", 2, 0.9, arm="focal"),  # a running trial's best so far counts
        _trial("TERMINATED", 1, 0.1, arm="focal", **{DIVERGED_KEY: 1}),  # its value does not
        _trial("TERMINATED", 4, float("nan"), arm="ce"),
        _trial("TERMINATED", 4, 0.7, arm="ce"),
        _trial("ERROR", 1, 0.65, arm="ce"),
        SimpleNamespace(
            trial_id="confirmation",
            status="TERMINATED",
            last_result={"training_iteration": 4, METRIC: 0.5},
            config={"arm": "bce", "seed": 1, "role": "confirmation"},
        ),
    ]
    progress = _progress(mode=mode, arms=("ce", "focal", "weighted-ce"))
    best = progress.snapshot(trials).best
    assert list(best) == ["ce", "focal", "weighted-ce", "bce"]  # the arms' order, then others
    assert (best["focal"], best["ce"]) == pytest.approx(expected)
    assert (best["weighted-ce"], best["bce"]) == (None, 0.5)


def test_time_left_is_the_mean_trial_time_over_the_trials_left_per_slot():
    ended = [30.0, 50.0, 40.0]
    trials = [_trial("TERMINATED", 4, 0.5, seconds=s) for s in ended] + [
        _trial("RUNNING", 2, 0.5, seconds=10.0),
        _trial("RUNNING", 3, 0.5, seconds=55.0),  # past the mean: counted as ending now
        _trial("PENDING"),
    ]
    clock = Clock()
    progress = _progress(total=8, slots=2, clock=clock)
    clock.now += 125
    snap = progress.snapshot(trials)
    mean = statistics.fmean(ended)
    queued = 8 - 5  # one created and two not yet
    assert snap.elapsed == 125
    assert snap.remaining == pytest.approx((queued * mean + (mean - 10.0)) / 2)
    # More trials running than slots planned (an autoscaler added a node): they share it.
    assert estimate_remaining([40.0], [0.0, 0.0, 0.0], 3, 2) == pytest.approx(6 * 40 / 3)
    assert estimate_remaining([], [5.0], 3, 2) is None  # nothing has ended yet
    # Nothing queued, and the running trial is older than the mean: it is about to end.
    last = _progress(total=4, clock=clock).snapshot(trials[:3] + [trials[4]])
    assert last.remaining == 0 and trial_line(last).endswith("elapsed, finishing")


def _run_phase(progress, clock, durations=(20.0, 40.0, 30.0)):
    """Ray's calls for a phase of ``len(durations)`` trials, two at a time, 10 s apart."""
    trials = [_trial("PENDING", arm=("focal", "ce")[i % 2]) for i in range(len(durations))]
    progress.setup(total_num_samples=len(trials))
    progress.on_step_end(0, trials)
    for i, trial in enumerate(trials):
        progress.on_trial_start(i, trials, trial)
        trial.status = "RUNNING"
        clock.now += 10
        result = {"training_iteration": 4, METRIC: 0.5 + i / 10, "time_total_s": durations[i]}
        progress.on_trial_result(i, trials, trial, result)
        trial.last_result = result
        progress.on_step_end(i, trials)
        if i >= 1:  # the one before ends while this one runs
            clock.now += 1
            progress.on_trial_complete(i, trials, trials[i - 1])
            trials[i - 1].status = "TERMINATED"
    progress.on_trial_complete(9, trials, trials[-1])
    trials[-1].status = "TERMINATED"
    progress.on_experiment_end(trials)
    return trials


def test_off_a_terminal_a_plain_line_per_ended_trial_and_the_phase_line(capsys):
    clock = Clock()
    _run_phase(_progress(total=3, slots=2, clock=clock, arms=("focal", "ce")), clock)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert out.splitlines() == [
        "[search] 1/3 trials done, 1 running; best val_macro_f1 focal 0.5000, ce 0.6000; "
        # The ended trial took 21 s from its start; the one queued takes as long, the one
        # running 21 - 11 s more: (21 + 10) s over 2 slots.
        "0:21 elapsed, about 0:16 left",
        "[search] 2/3 trials done, 1 running; best val_macro_f1 focal 0.7000, ce 0.6000; "
        "0:32 elapsed, about 0:05 left",  # (21.5 - 11) s of the running one over 2 slots
        "[search] 3/3 trials done in 0:32; best val_macro_f1 focal 0.7000, ce 0.6000",
    ]


@pytest.mark.parametrize("env", [{}, {"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_a_terminal_redraws_the_view_in_place_and_keeps_one_line(monkeypatch, env):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clock, screen = Clock(), Terminal()
    _run_phase(_progress(total=3, stream=screen, clock=clock), clock)
    out = screen.getvalue()
    final = "[search] 3/3 trials done in 0:32; best val_macro_f1 focal 0.7000, ce 0.6000\n"
    if env:  # asked for plain output
        assert "\x1b" not in out and out.endswith(final)
        return
    redraws = out.split("\r\x1b[3A\x1b[J")  # back up over the three lines, clear them
    # The first draw; five more, each at least 0.5 s after the one before; the last line.
    assert len(redraws) == 7
    assert redraws[0].startswith("[search] [--------------------] 0/3 trials done, 0 running")
    assert redraws[-1] == final
    assert all(len(r.splitlines()) == 3 for r in redraws[:-1])
    assert "[search] [#############-------] 2/3 trials done, 1 running" in redraws[-2]


def test_redraws_wait_half_a_second():
    clock, screen = Clock(), Terminal()
    progress = _progress(total=2, stream=screen, clock=clock, live=True)
    trials = [_trial("RUNNING", 1, 0.5)]
    for _ in range(5):  # results faster than twice a second
        progress.on_trial_result(0, trials, trials[0], trials[0].last_result)
        clock.now += 0.2
    assert screen.getvalue().count("[search] [") == 2  # at 0.0 s and at 0.6 s


def test_plurals_and_outcomes_named_once():
    trials = [_trial("TERMINATED", 2, 0.5, seconds=4.0), _trial("RUNNING", 1, 0.4)]
    progress = _progress(total=3)
    snap = progress.snapshot(trials)
    assert trial_line(snap).startswith("[search] 1/3 trials done (1 stopped early), 1 running;")
    assert live_lines(snap) == [
        "[search] [#######-------------] 1/3 trials done, 1 running",
        "  1 stopped early, 0 diverged, 0 failed | 0:00 elapsed, about 0:08 left",
        "  best val_macro_f1 focal 0.5000",
    ]
    one = _progress(total=1).snapshot([_trial("ERROR", 1)])
    assert final_line(one) == (
        "[search] 1/1 trial done in 0:00 (1 failed); best val_macro_f1 focal n/a"
    )
    assert final_line(progress.snapshot(trials)).startswith(
        "[search] stopped after 0:00: 1/3 trials done (1 stopped early), 2 unfinished;"
    )


def test_the_view_fits_80_columns_with_two_arms_and_hours():
    clock = Clock()
    trials = [_trial("TERMINATED", 4, 0.91234, arm="weighted-ce", seconds=4000.0)] * 2 + [
        _trial("RUNNING", 1, 0.81234, arm="focal", seconds=40.0)
    ]
    progress = Progress("confirmation", 10, METRIC, "max", 4, False, slots=3, clock=clock)
    clock.now += 36000
    lines = live_lines(progress.snapshot(trials))
    # Seven trials to start and 3960 s of the running one, three at a time.
    assert lines[1].endswith("| 10:00:00 elapsed, about 2:57:33 left")
    assert max(map(len, lines)) < 80


def test_quiet_prints_nothing(capsys):
    clock = Clock()
    progress = Progress("search", 3, METRIC, "max", 4, quiet=True, clock=clock)
    _run_phase(progress, clock)
    assert capsys.readouterr().out == ""


def test_the_callback_pickles_with_the_tuner_without_its_terminal(capsys):
    progress = Progress("search", 2, METRIC, "max", 4, quiet=False, live=True)
    copy = pickle.loads(pickle.dumps(progress))  # Ray pickles run_config's callbacks
    copy.setup()
    copy.on_experiment_end([_trial("TERMINATED", 4, 0.75)])
    assert capsys.readouterr().out == (
        "[search] stopped after 0:00: 1/2 trials done, 1 unfinished; "
        "best val_macro_f1 focal 0.7500\n"
    )


def test_ray_notices_the_sweep_replaces_are_left_out():
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    # Whatever an earlier test's Ray set for its loggers, this one passes warnings on.
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    try:
        quiet_ray_notices()
        quiet_ray_notices()  # twice: one filter
        logger.warning("Token authentication is enabled for this Ray cluster. Set ...")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    assert seen == ["Token authentication is disabled for this Ray cluster. Anyone ..."]
    assert len(logger.filters) == 1


def test_a_crash_closes_open_runs_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import dataclasses

    from mlflow.tracking import MlflowClient

    from sweep import runner
    from sweep.options import parse_args
    from sweep.plan import build_plan
    from trainables.edge.tracking import TrialRun

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan = build_plan(parse_args(["--space", "focal"]))
    plan = dataclasses.replace(plan, argv=("--space", "focal"), stamp="1")
    opened = []

    def crash(plan, trainable, target):  # a trial is running when the driver breaks
        run = TrialRun.open(
            target.uri,
            experiment_id=target.experiment_id,
            parent_run_id=target.parent_run_id,
            run_name="t",
            tags={"role": "search"},
            params={},
        )
        opened.append(run.run_id)
        raise RuntimeError("Ray's actor manager broke")

    monkeypatch.setattr(runner, "start_ray", lambda plan, early=None: False)
    monkeypatch.setattr(runner, "_trainable", lambda plan, target: None)
    monkeypatch.setattr(runner, "search_and_confirm", crash)
    with pytest.raises(RuntimeError, match="actor manager"):
        runner.run_sweep(plan)
    client = MlflowClient(plan.tracking_uri)
    child = client.get_run(opened[0])
    assert (child.info.status, child.data.tags["outcome"]) == ("KILLED", "interrupted")
    parent = child.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "FAILED"
    assert capsys.readouterr().err.strip().endswith(f"--space focal --resume {parent}")

    # Older versions kept the phases as two experiments: resuming one is refused, in one line.
    import tune

    old = tmp_path / "ray_results" / "focal-confirm-1"
    old.mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--space", "focal", "--resume"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"tune.py: error: the sweep at {old} ran as two Ray Tune experiments, one per phase; "
        "this version runs a sweep as one and cannot resume it (the version that started it "
        "can)\n"
    )
    assert client.get_run(parent).info.status == "FAILED"  # left as it was


def _confirmation(arm, status="RUNNING", iteration=0, value=None):
    trial = _trial(status, iteration, value, arm=arm)
    trial.config = {"arm": arm, "role": "confirmation", "seed": 1}
    return trial


def _sweep_progress(out, search_total=3, pairs=2):
    views = [
        Progress(phase, total, METRIC, "max", 4, quiet=False, live=False, stream=out)
        for phase, total in (("search", search_total), ("confirmation", 0))
    ]
    progress = SweepProgress(*views, pairs=pairs)
    progress.setup()
    return progress, views


def _end(progress, trials, trial, status="TERMINATED"):
    """As Ray ends a trial: the callbacks first, its status after."""
    if status == "ERROR":
        progress.on_trial_error(0, trials, trial)
    else:
        progress.on_trial_complete(0, trials, trial)
    trial.status = status


def test_one_tuner_shows_the_search_then_the_confirmation_each_with_its_own_trials():
    out = io.StringIO()
    progress, views = _sweep_progress(out)
    search = [
        _trial("RUNNING", 4, 0.8, arm="focal"),
        _trial("RUNNING", 2, 0.6, arm="focal"),  # ASHA will stop it
        _trial("RUNNING", 1, 0.9, arm="ce"),  # it will fail: ce has nothing to confirm
    ]
    for trial in search:
        progress.on_trial_start(0, search, trial)
    _end(progress, search, search[0])
    _end(progress, search, search[1])
    assert out.getvalue().splitlines()[-1].startswith("[search] 2/3 trials done")
    # focal's search has ended, so its runs start while ce still searches: silently.
    runs = [_confirmation("focal"), _confirmation("focal")]
    trials = search + runs
    progress.on_trial_start(0, trials, runs[0])
    runs[0].last_result = {"training_iteration": 4, METRIC: 0.7}
    _end(progress, trials, runs[0])
    assert "[confirmation]" not in out.getvalue()
    _end(progress, trials, search[2], "ERROR")
    assert out.getvalue().splitlines()[-1] == (
        "[search] 3/3 trials done in 0:00 (1 stopped early, 1 failed); "
        "best val_macro_f1 focal 0.8000, ce 0.9000"  # the view shows what trials reported
    )
    assert views[1].total == 2  # two pairs for focal, none for ce
    progress.on_trial_start(0, trials, runs[1])
    runs[1].last_result = {"training_iteration": 4, METRIC: 0.75}
    _end(progress, trials, runs[1])
    progress.on_experiment_end(trials)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "[confirmation] 2/2 trials done in 0:00; best val_macro_f1 focal 0.7500"
    assert sum(line.startswith("[search] 3/3") for line in lines) == 1
    assert sum(line.startswith("[confirmation]") for line in lines) == 1


def test_a_resumed_sweep_whose_search_had_ended_shows_its_confirmation_at_once():
    out = io.StringIO()
    progress, views = _sweep_progress(out, search_total=2, pairs=1)
    search = [_trial("TERMINATED", 4, 0.8, arm="focal"), _trial("TERMINATED", 4, 0.7, arm="ce")]
    runs = [_confirmation("focal"), _confirmation("ce")]
    trials = search + runs
    progress.on_trial_start(0, trials, runs[0])
    progress.on_trial_start(0, trials, runs[1])
    runs[0].last_result = {"training_iteration": 4, METRIC: 0.7}
    _end(progress, trials, runs[0])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[search] 2/2 trials done in 0:00")
    assert lines[1].startswith("[confirmation] 1/2 trials done, 1 running")
    assert views[1].total == 2


def test_a_search_without_confirmation_leaves_its_block_closed_until_the_end():
    out = Terminal()
    clock = Clock()
    search = Progress("search", 1, METRIC, "max", 4, False, live=True, stream=out, clock=clock)
    progress = SweepProgress(search, None, pairs=0)
    progress.setup()
    trials = [_trial("RUNNING", 4, 0.8)]
    progress.on_trial_start(0, trials, trials[0])
    _end(progress, trials, trials[0])
    final = out.getvalue()
    assert final.endswith("[search] 1/1 trial done in 0:00; best val_macro_f1 focal 0.8000\n")
    clock.now += 10  # Ray goes on stepping while it shuts the trials' workers down
    progress.on_step_end(0, trials)
    progress.on_experiment_end(trials)
    assert out.getvalue() == final


def test_confirmation_runs_that_start_after_the_search_has_ended_are_shown():
    """One trial at a time (one GPU, --max-concurrent 1): the search ends first."""
    out = Terminal()
    clock = Clock()
    views = [
        Progress(phase, total, METRIC, "max", 4, False, live=True, stream=out, clock=clock)
        for phase, total in (("search", 1), ("confirmation", 0))
    ]
    progress = SweepProgress(*views, pairs=1)
    progress.setup()
    search = [_trial("RUNNING", 4, 0.8)]
    progress.on_trial_start(0, search, search[0])
    _end(progress, search, search[0])
    clock.now += 10
    progress.on_step_end(0, search)  # nothing to draw between the phases
    assert out.getvalue().endswith(
        "[search] 1/1 trial done in 0:00; best val_macro_f1 focal 0.8000\n"
    )
    run = _confirmation("focal")
    trials = [*search, run]
    progress.on_trial_start(0, trials, run)
    clock.now += 10
    progress.on_step_end(0, trials)
    assert out.getvalue().endswith("  best val_macro_f1 focal n/a\n")
    assert "[confirmation] [--------------------] 0/1 trial done, 1 running" in out.getvalue()


def test_a_sweep_resumed_after_its_last_run_ended_still_leaves_both_lines():
    out = io.StringIO()
    progress, _ = _sweep_progress(out, search_total=1, pairs=1)
    trials = [_trial("TERMINATED", 4, 0.8), _confirmation("focal", "TERMINATED", 4, 0.9)]
    progress.on_experiment_end(trials)
    assert out.getvalue().splitlines() == [
        "[search] 1/1 trial done in 0:00; best val_macro_f1 focal 0.8000",
        "[confirmation] 1/1 trial done in 0:00; best val_macro_f1 focal 0.9000",
    ]


def test_only_runs_the_scheduler_stopped_or_ray_lost_are_closed_by_the_driver(monkeypatch):
    """A trial that ran to its end or diverged ended its own run before its last report:
    asking the store about it (one query per trial, on the driver's loop) is waste."""
    from sweep.callbacks import CloseRuns

    ended = []
    monkeypatch.setattr(
        "trainables.edge.tracking.end_trial_run",
        lambda uri, run, outcome: ended.append((run, outcome)),
    )
    close = CloseRuns(SimpleNamespace(uri="sqlite://"), max_epochs=4)
    for run, result in {
        "completed": {"training_iteration": 4},
        "stopped": {"training_iteration": 2},
        "diverged": {"training_iteration": 1, DIVERGED_KEY: 1},
    }.items():
        trial = SimpleNamespace(last_result={**result, "mlflow_run_id": run})
        close.on_trial_complete(0, [], trial)
    close.on_trial_error(0, [], SimpleNamespace(last_result={"mlflow_run_id": "lost"}))
    assert ended == [("stopped", contract.STOPPED_EARLY), ("lost", contract.FAILED)]
