"""One family of user errors: the command line reports a ``UserError`` as one line and exit
status 2; any other exception is a bug and keeps its traceback (exit status 1)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tune
from analysis.errors import AnalysisError
from search_spaces import SpaceError
from sweep.plan import UsageError
from trainables.data import DataError
from trainables.errors import UserError
from trainables.losses import LossError
from trainables.models import ModelError
from trainables.optim import OptimizerError

ROOT = Path(__file__).resolve().parents[2]

# Python run in a subprocess: a bug planted inside build_plan, then tune.py's main.
PLANTED_BUG = """
import sys
import sweep.plan

def resolve_dataset(name):
    raise ValueError("planted bug")

sweep.plan.resolve_dataset = resolve_dataset
import tune
sys.exit(tune.main(["--space", "focal"]))
"""


@pytest.mark.parametrize(
    "error",
    [DataError, ModelError, LossError, OptimizerError, SpaceError, UsageError, AnalysisError],
)
def test_every_user_error_is_a_user_error_and_no_value_error(error):
    assert issubclass(error, UserError)
    # A ValueError from a bug must never pass for bad input.
    assert not issubclass(error, ValueError)


def _plant(monkeypatch, error: Exception) -> None:
    import sweep.plan

    def resolve_dataset(name: str) -> None:
        raise error

    monkeypatch.setattr(sweep.plan, "resolve_dataset", resolve_dataset)


def test_a_value_error_inside_build_plan_is_a_bug_not_bad_input(in_tmp, monkeypatch, capsys):
    _plant(monkeypatch, ValueError("planted bug"))
    with pytest.raises(ValueError, match="planted bug"):
        tune.main(["--space", "focal"])
    assert "error" not in capsys.readouterr().err
    assert list(in_tmp.iterdir()) == []


def test_a_user_error_from_any_package_is_one_line_and_exit_2(in_tmp, monkeypatch, capsys):
    _plant(monkeypatch, ModelError("planted bad input"))
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--space", "focal"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "tune.py: error: planted bad input\n"


def test_the_real_command_keeps_a_bugs_traceback_and_exits_1(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PLANTED_BUG],
        cwd=tmp_path,
        env={**_env_without_tracking_uri(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: planted bug" in result.stderr
    assert "tune.py: error" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _env_without_tracking_uri() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def test_tune_exits_at_once_after_its_threads_and_exit_handlers(tmp_path):
    """``tune.py`` skips the interpreter's teardown (seconds with torch, Ray and MLflow loaded)
    but not what a normal exit does first: a running thread finishes, an idle thread pool (as
    MLflow's artifact uploads leave one) is shut down instead of waited on forever, the exit
    handlers run, buffered output is written, and the status is the one ``main`` returned."""
    handler, worker = tmp_path / "handler", tmp_path / "thread"
    probe = f"""
import atexit, concurrent.futures, threading, time
import tune
atexit.register(lambda: open({str(handler)!r}, "w").write("ran"))
threading.Thread(target=lambda: (time.sleep(0.5), open({str(worker)!r}, "w").write("done"))).start()
pool = concurrent.futures.ThreadPoolExecutor(1)  # kept, as MLflow keeps its uploaders' pool
pool.submit(print, "pooled,", end="").result()
print("buffered", end="")
tune.exit_at_once(3)
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert (out.returncode, out.stdout) == (3, "pooled,buffered")
    assert handler.read_text() == "ran" and worker.read_text() == "done"
