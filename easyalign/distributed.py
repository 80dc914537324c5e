"""Start the JAX multi-controller runtime: one program, many processes, one global mesh.

Every process runs the same command. Where the coordinator comes from, in order:

1. explicit flags `--coordinator=HOST:PORT --num_processes=N --process_id=I`
   (or the `distributed` config block), e.g. several processes on one machine;
2. SLURM variables (`SLURM_JOB_ID`, `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_STEP_NODELIST`),
   read by JAX's own cluster detection when `jax.distributed.initialize()` gets no arguments;
3. neither: a single process, nothing to initialise.

On CPU-only machines the processes exchange data through gloo collectives. Process 0 alone
writes logs, plots and exports; checkpoints are written by all processes together (Orbax).
A process that dies makes the others fail at their next collective, and JAX's coordination
service (heartbeat timeouts) stops them with an error instead of a hang.

Joining is watched (`_join`): a line says what each process waits for, a process the others
never join stops after `distributed.init_timeout_s` with one line (`DistributedError`), and
Ctrl-C or SIGTERM stop the wait — JAX's own wait blocks in C++ (signals unanswered) and ends
after 300 s in an abort. Every process checks that the run has the processes it was told of.
"""

from __future__ import annotations

import os
import threading
import time

import jax

_initialized = False
# JAX's own join deadline is this much later than ours, so that ours speaks first.
JAX_DEADLINE_MARGIN_S = 60


class DistributedError(RuntimeError):
    """A multi-process run that could not form (the CLI prints the one line and exits at once:
    a half-joined JAX runtime must not run its teardown)."""


def check_coordinator(address: str) -> str | None:
    """Why `address` is not `HOST:PORT`, or None."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)"
    return None


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               cpu_collectives: str = "gloo", heartbeat_timeout_s: int | None = None,
               init_timeout_s: int = 300) -> bool:
    """Initialise multi-process JAX if asked for (or under SLURM); returns True if it did.

    Must run before anything touches a device. Idempotent. Raises ValueError for flags that
    cannot form a run, DistributedError when the others do not join within `init_timeout_s`
    or the run formed has another number of processes than `num_processes`.
    """
    global _initialized
    if _initialized:
        return True
    if not coordinator and not in_slurm_job():
        return False
    if jax.config.jax_platforms in (None, "", "cpu") and cpu_collectives:
        # Harmless on GPU machines (only the CPU backend reads it); required for CPU tests.
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {"initialization_timeout": init_timeout_s + JAX_DEADLINE_MARGIN_S}
    if heartbeat_timeout_s is not None:
        kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout_s
    if coordinator:
        problem = check_coordinator(coordinator)
        if problem:
            raise ValueError(f"--coordinator: {problem}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--coordinator needs --num_processes ≥ 1 and 0 ≤ --process_id < "
                             f"--num_processes (got {num_processes} and {process_id})")
        where = f"process {process_id} of {num_processes} at {coordinator}"
        _join(lambda: jax.distributed.initialize(coordinator, num_processes=num_processes,
                                                 process_id=process_id, **kwargs),
              where, init_timeout_s)
    else:
        where = (f"SLURM task {os.environ.get('SLURM_PROCID', '?')} of "
                 f"{os.environ.get('SLURM_NTASKS', '?')}")
        num_processes = int(os.environ.get("SLURM_NTASKS", "0"))
        _join(lambda: jax.distributed.initialize(**kwargs), where, init_timeout_s)
    _initialized = True
    if num_processes and jax.process_count() != num_processes:
        raise DistributedError(f"{where}: the run formed with {jax.process_count()} processes "
                               f"— start every process with the same --num_processes")
    return True


def _join(start, where: str, timeout_s: int) -> None:
    """Run `start` (JAX's join, which blocks in C++) in a thread while this one waits, so that
    Ctrl-C and SIGTERM are answered and a join that does not happen ends in one line."""
    print(f"[distributed] {where}: joining (waits up to {timeout_s} s for every process: "
          "distributed.init_timeout_s)", flush=True)
    failed: list[BaseException] = []

    def run():
        try:
            start()
        except BaseException as error:  # noqa: BLE001 — re-raised in the waiting thread
            failed.append(error)

    thread = threading.Thread(target=run, name="jax-distributed-join", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive():
        thread.join(0.2)
        if thread.is_alive() and time.monotonic() > deadline:
            raise DistributedError(
                f"{where}: not every process joined within {timeout_s} s — start each with the "
                "same --coordinator and --num_processes and its own --process_id (or raise "
                "distributed.init_timeout_s)")
    if failed:
        raise failed[0]


def is_initialized() -> bool:
    """Whether this process joined (or began to join) a multi-process run."""
    return _initialized or any(t.name == "jax-distributed-join" for t in threading.enumerate())


def initialize_from_config(config) -> bool:
    d = config.distributed
    return initialize(d.coordinator, d.num_processes, d.process_id, d.cpu_collectives,
                      heartbeat_timeout_s=d.heartbeat_timeout_s,
                      init_timeout_s=d.get("init_timeout_s", 300))


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
