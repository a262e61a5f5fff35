"""The Ray session of a sweep: joining or starting Ray, mending the state files a killed
driver left, watching Ctrl-C during ``fit``, and shutting Ray down beside the sweep's last steps."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from sweep.console import quiet_libraries
from sweep.local_ray import (
    LocalRay,
    LocalRayOptions,
    let_trials_take_warm_workers,
    local_ray_settings,
)
from sweep.plan import SweepPlan, UsageError
from sweep.ray_address import LOCAL


def start_ray(plan: SweepPlan, early: LocalRay | None = None) -> bool:
    """Connect to ``--address`` or start a local Ray (or use ``early``, the one ``tune.py``
    started as it started, when it suits the plan); False when this process already had one
    (a notebook or a test session), which is then left running. Then refuse a sweep the
    cluster can never run (``sweep.cluster``), shutting down a Ray started here."""
    import ray

    from sweep import cluster

    quiet_libraries(plan.verbose)
    if early is not None:
        if early.suits(plan) and early.take():
            let_trials_take_warm_workers()
            return _check_cluster_or_stop(plan, early.close)
        early.close()  # started on a guess the whole command line contradicts, or none
    if ray.is_initialized():
        cluster.check_cluster(plan)
        return False
    kwargs = local_ray_settings(LocalRayOptions(plan.num_cpus, plan.verbose))
    joins = plan.address not in (None, LOCAL)  # --address local: a Ray of the sweep's own
    if joins:
        cluster.check_reachable(plan.address)  # Ray itself retries for minutes
        kwargs.pop("num_cpus", None)
        kwargs["address"] = plan.address
        # Trials get the store from their TrackingTarget; this covers any other MLflow call
        # on the nodes, whatever their own environment holds.
        kwargs["runtime_env"] = {"env_vars": {"MLFLOW_TRACKING_URI": plan.tracking_uri}}
    else:
        # Ray starts one idle worker per CPU for its first driver. Started here, after the
        # driver's imports, they only slow the trials' own start on a small machine;
        # tune.py's early Ray does use them.
        kwargs["_system_config"] = {"prestart_worker_first_driver": False}
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as err:
        if not joins:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot join the Ray cluster at {plan.address}: {reason}") from None
    return _check_cluster_or_stop(plan, ray.shutdown)


def _check_cluster_or_stop(plan: SweepPlan, stop) -> bool:
    from sweep import cluster

    try:
        cluster.check_cluster(plan)
    except BaseException:
        stop()
        raise
    return True


def repair_experiment_state(folder: Path) -> list[Path]:
    """Mend state files a killed driver left empty. Ray writes them atomically to a staging
    folder and copies them to a local ``--storage-path`` in the background; a kill during the
    copy leaves an empty file, and a restore that reads it silently starts the phase over.
    The staging copy (under Ray's temporary folder) is whole: put it back, else drop the empty
    file so Ray reads an older one. Returns the files mended or dropped."""
    if "://" in str(folder) or not folder.is_dir():
        return []
    mended = []
    states = (f for f in folder.iterdir() if f.suffix in {".json", ".pkl"} and f.is_file())
    for broken in (f for f in states if f.stat().st_size == 0):
        staged = sorted(
            _ray_temp_dir().glob(
                f"session_*/artifacts/*/{folder.name}/driver_artifacts/{broken.name}"
            ),
            key=lambda f: f.stat().st_mtime,
        )
        whole = [f for f in staged if f.stat().st_size > 0]
        if whole:
            shutil.copyfile(whole[-1], broken)
        else:
            broken.unlink()
        mended.append(broken)
    return mended


def _ray_temp_dir() -> Path:
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def fit_watching_ctrl_c(tuner: Any) -> Any:
    """``tuner.fit()``, raising ``KeyboardInterrupt`` when Ctrl-C ended it. Ray catches the
    first Ctrl-C, saves the experiment and returns normally, putting back the handler it
    found: a marker handler installed here tells that apart from a finished fit."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()
    previous = signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        grid = tuner.fit()
        if signal.getsignal(signal.SIGINT) is _raise_keyboard_interrupt:
            raise KeyboardInterrupt
        return grid
    finally:
        signal.signal(signal.SIGINT, previous)


def trials_at_once(plan: SweepPlan) -> int:
    """``--max-concurrent`` when given, else what the nodes alive now can run together."""
    import ray

    if plan.max_concurrent:
        return plan.max_concurrent
    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 1) / max(plan.cpus_per_trial, 1e-9)]
    if plan.gpus_per_trial:
        fits.append(resources.get("GPU", 0) / plan.gpus_per_trial)
    return max(1, int(min(fits)))


class RayStop:
    """The shutdown of a Ray this sweep started: mostly waiting for its processes to end
    (about 1.4 s here), so it runs on a thread while the sweep writes its answer and models
    (``early``'s own thread, for the Ray tune.py started early)."""

    def __init__(self, started_ray: bool, early: LocalRay | None = None) -> None:
        self._started = started_ray
        self._early = early
        self._thread: threading.Thread | None = None
        self._collecting = False  # the garbage collector was on when ``begin`` turned it off

    def begin(self) -> None:
        """Start the shutdown, once the sweep's own Ray objects are gone. Unreachable objects
        of the Tuner's (trials, actor handles, object refs) are otherwise freed whenever the
        garbage collector next runs: if that is while the core worker is being torn down on
        the other thread, Ray ends the whole process with status 1 and no message (seen
        after a resumed sweep, in the middle of its answer)."""
        import gc

        import ray

        if not self._started:
            return
        gc.collect()
        # Nor while the shutdown runs: no later cycle can take a Ray object into the window.
        # (Nothing the sweep does from here on holds one, so no reference count falls to it.)
        if gc.isenabled():
            self._collecting = True
            gc.disable()
        if self._early is not None:
            self._early.begin_close()
        elif self._thread is None:
            self._thread = threading.Thread(target=ray.shutdown, name="ray-shutdown")
            self._thread.start()

    def finish(self) -> None:
        """Wait for a shutdown ``begin`` started, or shut down now."""
        import gc

        try:
            self._stop()
        finally:
            if self._collecting:
                self._collecting = False
                gc.enable()

    def _stop(self) -> None:
        if not self._started:
            return
        if self._early is not None:
            self._early.close()
        elif self._thread is None:
            import ray

            ray.shutdown()
        else:
            self._thread.join()
