"""The sweep's Ray, shut down on a thread while the sweep writes its last results: every
process it started is gone once ``finish`` returns (checked before the script exits, whose
exit would end them anyway)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, threading
    from pathlib import Path
    import ray
    from sweep.ray_session import RayStop

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    node = ray._private.worker._global_node
    pids = [p.process.pid for ps in node.all_processes.values() for p in ps]
    stop = RayStop(started_ray=True)
    stop.begin()
    stop.begin()  # a second call starts no second shutdown
    on_thread = [t.name for t in threading.enumerate() if t.name == "ray-shutdown"]
    stop.finish()

    def alive(pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"  # a zombie has ended, only not yet been reaped

    report = {"pids": pids, "alive": [p for p in pids if alive(p)]}
    print(json.dumps({**report, "on_thread": on_thread, "up": ray.is_initialized()}))
    """
)


def test_ray_stopped_on_a_thread_leaves_no_process():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["on_thread"] == ["ray-shutdown"] and report["up"] is False
    assert len(report["pids"]) >= 2  # the GCS and the raylet at least
    assert report["alive"] == []


def test_a_ray_the_sweep_did_not_start_is_left_running():
    from sweep.ray_session import RayStop

    stop = RayStop(started_ray=False)
    stop.begin()
    stop.finish()
    assert stop._thread is None


CYCLE_SCRIPT = textwrap.dedent(
    """
    import gc, json, weakref
    import ray
    from sweep.ray_session import RayStop

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    gc.disable()  # the collector runs only when asked, as if it had not come round yet

    class Holder:  # stands for a trial, an actor handle's owner, a future's callback
        pass

    freed = []
    holder = Holder()
    holder.ref, holder.me = ray.put(list(range(10))), holder  # a cycle that keeps a Ray ref
    weakref.finalize(holder, lambda: freed.append(ray.is_initialized()))
    del holder
    stop = RayStop(started_ray=True)
    stop.begin()
    at_begin = list(freed)
    stop.finish()
    print(json.dumps({"at_begin": at_begin}))
    """
)


def test_the_sweeps_ray_objects_are_freed_before_ray_shuts_down_beside_it():
    """Garbage that holds Ray's objects is collected while Ray is up, not later on the main
    thread while the core worker is torn down on the other (Ray then ended the process with
    status 1 and no message: a fixed bug)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CYCLE_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["at_begin"] == [True]


def test_the_garbage_collector_rests_only_while_ray_shuts_down_beside_the_sweep():
    script = textwrap.dedent(
        """
        import gc, json
        from sweep.ray_session import RayStop

        stop = RayStop(started_ray=True)  # no Ray in this process: its shutdown returns at once
        before = gc.isenabled()
        stop.begin()
        stop.begin()  # begun twice, ended once
        during = gc.isenabled()
        stop.finish()
        print(json.dumps([before, during, gc.isenabled()]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [True, False, True]
