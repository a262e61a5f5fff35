"""``python -m analysis`` reports a ``UserError`` as one line and exit status 2; any other
exception is a bug and keeps its traceback (exit status 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import analysis.cli
from analysis.errors import AnalysisError
from trainables.data import DataError

REPO = Path(__file__).resolve().parents[2]

ARGV = ["best", "--experiment", "nowhere", "--tracking-uri", "sqlite:///unused.db"]

PLANTED_BUG = f"""
import sys
import analysis.cli

def cmd_best(args):
    raise ValueError("planted bug")

analysis.cli.cmd_best = cmd_best
sys.exit(analysis.cli.main({ARGV!r}))
"""


def _plant(monkeypatch, error: Exception) -> None:
    def cmd_best(args):
        raise error

    monkeypatch.setattr(analysis.cli, "cmd_best", cmd_best)


@pytest.mark.parametrize("error", [AnalysisError, DataError])
def test_a_user_error_is_one_line_and_exit_2(error, monkeypatch, capsys):
    _plant(monkeypatch, error("planted bad input"))
    assert analysis.cli.main(ARGV) == 2
    assert capsys.readouterr().err == "analysis: error: planted bad input\n"


def test_a_value_error_is_a_bug_not_bad_input(monkeypatch, capsys):
    _plant(monkeypatch, ValueError("planted bug"))
    with pytest.raises(ValueError, match="planted bug"):
        analysis.cli.main(ARGV)
    assert capsys.readouterr().err == ""


def test_the_real_command_keeps_a_bugs_traceback_and_exits_1(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PLANTED_BUG],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: planted bug" in result.stderr
    assert "analysis: error" not in result.stderr
