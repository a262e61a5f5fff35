"""The console while a sweep runs: a block of lines redrawn in place on a terminal, plain
lines anywhere else, and Ray's notices that the sweep's own output makes redundant."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from typing import TextIO

CURSOR_UP = "\x1b[{}A"
CLEAR_TO_END = "\x1b[J"

# Ray's own notices (logger: message starts) that say what the sweep says better, or that
# ask nothing of the user. Others, warnings and errors included, pass.
REPLACED_NOTICES: dict[str, tuple[str, ...]] = {
    # Ray's default for a local cluster since 2.5x, announced at every start.
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    # The summary names the failed trials and their first error, and tune.py prints the
    # command that resumes the sweep (Ray's names a Python call).
    "ray.tune.tune": ("Trials did not complete", "Experiment has been interrupted"),
    # Optuna's GridSampler stops its study once every combination is drawn: with --searcher
    # grid that is the arm's budget reached, as planned (sweep.methods.arm_grids).
    "ray.tune.search.optuna.optuna_search": ("`Study.stop` is supposed to be invoked",),
}


def live_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` can take a view redrawn in place: a terminal that moves its cursor
    (not ``TERM=dumb``) and whose user did not ask for plain output (``NO_COLOR``)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LiveBlock:
    """A few lines redrawn in place: each draw moves the cursor up over the lines drawn last,
    clears to the end of the screen and writes the new ones. Lines are cut to the terminal's
    width, since a wrapped line would take two rows and the next redraw would miss one."""

    def __init__(self, stream: TextIO, width: int | None = None) -> None:
        self.stream = stream
        self.width = width
        self.drawn = 0

    def draw(self, lines: Sequence[str]) -> None:
        width = self.width or shutil.get_terminal_size().columns
        self._write(self._erase() + "".join(line[: width - 1] + "\n" for line in lines))
        self.drawn = len(lines)

    def close(self, line: str) -> None:
        """Replace the block by one line that stays."""
        self._write(self._erase() + line + "\n")
        self.drawn = 0

    def _erase(self) -> str:
        return f"\r{CURSOR_UP.format(self.drawn)}{CLEAR_TO_END}" if self.drawn else ""

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class _DropNotices(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_ray_notices() -> None:
    """Leave out ``REPLACED_NOTICES``; called before Ray starts, once or more."""
    for name, starts in REPLACED_NOTICES.items():
        drop_notices(name, starts)


def drop_notices(logger_name: str, starts: tuple[str, ...]) -> None:
    """Leave out the logger's records whose message starts so (one filter per logger)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropNotices) for f in logger.filters):
        logger.addFilter(_DropNotices(starts))


# requests silences urllib3's notice that SOCKS proxies need PySocks as it is imported. The
# warning filters are one list for every thread, and a ``catch_warnings`` block on one thread
# restores the list it saw: an import on the early Ray's thread could lose requests' filter
# that way, and the notice then came before a bad command line's one line (seen once).
SILENCED_WARNINGS = ("SOCKS support in urllib3 requires",)


def quiet_libraries(verbose: bool) -> None:
    """Ray's and MLflow's console output, set before either starts."""
    for start in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=start)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray's newer console output prints its boxes whatever ``verbose`` says; the classic one
    # honours it, so the project's progress lines are all a user sees unless --verbose.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    if not verbose:  # read when MLflow is first imported, after this
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:
        quiet_ray_notices()
