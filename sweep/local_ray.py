"""A local Ray started as ``tune.py`` starts, while the driver imports torch and validates the
command line, and whose workers import the trial's modules as they start, so the first trials
find them warm.

On a small machine a sweep's start is mostly work that waits on nothing else: the driver's
imports (one core), Ray's processes, the MLflow store, and each trial worker's imports (torch,
Ray Tune, MLflow, torch's compiler stack). Done one after the other, half the CPUs idle; here
they overlap. Nothing of this decides what the sweep does: the full command line is parsed as
before, and a Ray started on a guess it contradicts is shut down and started again.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

from sweep.ray_address import LOCAL, running_cluster

# What a trial's worker imports before its first epoch (seconds of CPU each; measured by
# benchmarks/startup_floor.py): the trial module (torch, Ray Tune, MLflow), the SQL store of a
# local MLflow database, and torch's compiler stack, which every torch.optim optimizer imports
# when it is first used. Ray imports them in each worker it starts, before the worker takes a
# task; a module that cannot be imported is skipped (and logged by Ray).
WORKER_PRELOAD = (
    "trainables.edge.trial",
    "mlflow.store.tracking.sqlalchemy_store",
    "torch._dynamo",
)
# Ray Tune gives its trials' actors this environment variable (for PyTorch Lightning, with
# Ray's value); set in the driver's environment, which a local Ray's workers inherit.
TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
THREAD_NAME = "local-ray"
# Ray starts one worker per CPU: warm workers pay where every one of them runs a trial at once
# and the start-up is a large share of the sweep, a small machine's sweep of one-CPU trials.
# Elsewhere most of them would import torch for nothing (and hold its memory for a minute).
WARM_WORKERS_MAX_CPUS = 8
# Ray reaps idle workers beyond its soft limit after a second (its default), which can take a
# warm worker before the trial meant for it does, leaving that trial a cold one: idle workers
# are kept a minute.
IDLE_WORKER_KEPT_MS = 60_000


@dataclass(frozen=True)
class LocalRayOptions:
    """The options of the command line that shape a local Ray."""

    num_cpus: int | None = None
    verbose: bool = False


def options_from_argv(argv: list[str]) -> LocalRayOptions | None:
    """The local Ray's options, read ahead of the full command line; None where ``tune.py``
    will not start a local Ray from this command line (``--address``, ``--resume``, whose
    options come from the sweep it continues, help, listings) or where it cannot tell."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-h", "--help", action="store_true")
    for flag in ("--list-spaces", "--list-backbones", "--verbose", "--check-data"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--address")
    parser.add_argument("--resume", nargs="?", const="latest")
    parser.add_argument("--num-cpus", type=int)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument("--max-concurrent", type=int, default=0)
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--arms")
    try:
        known, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None  # the full parser says what is wrong
    if known.help or known.list_spaces or known.list_backbones or known.check_data:
        return None
    if known.address is not None or known.resume is not None:
        return None
    if known.num_cpus is not None and known.num_cpus < 1:
        return None
    if not warm_workers_pay(
        known.num_cpus, known.cpus_per_trial, known.gpus_per_trial, known.max_concurrent
    ):
        return None
    if known.num_samples is not None and _fewest_trials(known) < (known.num_cpus or _cpus()):
        return None  # a warm worker per CPU, and fewer trials than that to take them
    return LocalRayOptions(num_cpus=known.num_cpus, verbose=known.verbose)


def _fewest_trials(known: argparse.Namespace) -> int:
    """The search trials at least (``--num-samples`` per arm; every space has two arms or
    more unless ``--arms`` names fewer). Measured: an idle warm worker holds about 530 MiB
    of its own (torch, MLflow) until Ray ends it. The default of 4 per arm fills the at most
    ``WARM_WORKERS_MAX_CPUS`` CPUs of a warm start."""
    arms = len(known.arms.split(",")) if known.arms else 2
    return known.num_samples * arms


def _cpus() -> int:
    return os.cpu_count() or 1


def warm_workers_pay(
    num_cpus: int | None, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int
) -> bool:
    """Whether every worker Ray starts with it runs a trial at once, on a small machine
    (``WARM_WORKERS_MAX_CPUS``)."""
    cpus = num_cpus or _cpus()
    one_per_cpu = (cpus_per_trial, gpus_per_trial) == (1.0, 0.0)
    all_at_once = max_concurrent == 0 or max_concurrent >= cpus
    return one_per_cpu and all_at_once and cpus <= WARM_WORKERS_MAX_CPUS


def local_ray_settings(options: LocalRayOptions) -> dict[str, Any]:
    """``ray.init``'s arguments for a local Ray of these options."""
    settings: dict[str, Any] = {
        # A Ray of its own. Given no address, ray.init joins the cluster an address file in
        # Ray's temp folder names, one that died without `ray stop` included (it refused this
        # Ray's settings for that cluster, or waited for it forever). A running one is found
        # beforehand (``sweep.ray_address``) and joined as ``--address auto``.
        "address": LOCAL,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        # Workers' own lines (Ray's checkpoint notices among them) only when asked for: a
        # trial's error reaches the summary and its error.txt either way.
        "log_to_driver": options.verbose,
    }
    if options.num_cpus:
        settings["num_cpus"] = options.num_cpus
    return settings


def warm_worker_settings() -> dict[str, Any]:
    """Ray's settings that start one worker per CPU as Ray starts, each importing
    ``WORKER_PRELOAD`` (``preload_python_modules``, Ray's own option for this)."""
    return {
        "prestart_worker_first_driver": True,
        "preload_python_modules": list(WORKER_PRELOAD),
        "idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEPT_MS,
    }


class LocalRay:
    """Ray started on a thread of its own that stays until ``close``: Ray's processes end with
    the thread that started them (Linux's parent-death signal), so a thread that returned
    after ``ray.init`` would take them along."""

    def __init__(self, options: LocalRayOptions) -> None:
        self.options = options
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.taken = False  # by the sweep, which then shuts it down (``sweep.runner``)
        self._cluster_found = False  # a running Ray cluster instead, which the sweep joins
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    @classmethod
    def start(cls, options: LocalRayOptions) -> LocalRay:
        """Start Ray on its thread; called from the main thread."""
        from sweep.console import drop_notices, quiet_libraries

        quiet_libraries(options.verbose)  # read as Ray starts
        for name, value in TUNE_ACTOR_ENV.items():
            os.environ[name] = value
        # What ray.init does in the main thread only (and says it did not, elsewhere): a
        # SIGTERM exits the driver the normal way, closing its runs and its Ray.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        drop_notices("ray._private.worker", ("SIGTERM handler is not set",))
        ray = cls(options)
        ray._thread.start()
        return ray

    def _run(self) -> None:
        try:
            import ray

            if running_cluster() is not None:  # the plan joins it (``sweep.plan``)
                self._cluster_found = True
                return
            ray.init(**local_ray_settings(self.options), _system_config=warm_worker_settings())
        except BaseException as err:  # raised again by ``wait``, in the sweep's thread
            self._error = err
            return
        finally:
            self._ready.set()
        self._stop.wait()
        ray.shutdown()

    def suits(self, plan: Any) -> bool:
        """Whether the sweep the full command line describes (a ``SweepPlan``) runs on this
        Ray, its workers used."""
        if plan.address is not None:
            return False
        if (plan.num_cpus, plan.verbose) != (self.options.num_cpus, self.options.verbose):
            return False
        return warm_workers_pay(
            plan.num_cpus, plan.cpus_per_trial, plan.gpus_per_trial, plan.max_concurrent
        )

    def take(self) -> bool:
        """Until Ray is up (raises what stopped it); whether the sweep runs on it from now on:
        not where a running cluster was found instead, which the plan joins (unless it has
        stopped since: then the sweep starts a Ray of its own after all)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        self.taken = not self._cluster_found
        return self.taken

    def abandon(self, status: int) -> NoReturn:
        """Exit the process with ``status`` now, for a command that ends before its sweep
        (bad input): waiting for Ray to finish starting and then shutting it down would take
        seconds after the error line. Ray's processes end with this process (their
        parent-death signal) and write nothing the user sees."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    def begin_close(self) -> None:
        """Shut Ray down on its thread (mostly waiting for its processes to end)."""
        self._stop.set()

    def close(self) -> None:
        """Shut Ray down and wait until every process it started has ended."""
        self.begin_close()
        self._thread.join()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(signum)


def let_trials_take_warm_workers() -> bool:
    """Ray gives an actor a worker it started beforehand only when their runtime environments
    match, and Ray Tune gives its trials' actors ``TUNE_ACTOR_ENV``, which workers started with
    Ray lack. With those values already in every worker's inherited environment, Tune's copy
    is dropped: the same values, and trials take the warm workers. Returns whether it was
    (not when Tune's variables are others than those set here)."""
    from ray.tune.execution import class_cache

    if class_cache.DEFAULT_ENV_VARS != TUNE_ACTOR_ENV:
        return False
    if any(os.environ.get(name) != value for name, value in TUNE_ACTOR_ENV.items()):
        return False
    class_cache.DEFAULT_ENV_VARS.clear()
    return True
