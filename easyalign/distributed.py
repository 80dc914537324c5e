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
"""

from __future__ import annotations

import os

import jax

_initialized = False


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               cpu_collectives: str = "gloo", heartbeat_timeout_s: int | None = None) -> bool:
    """Initialise multi-process JAX if asked for (or under SLURM); returns True if it did.

    Must run before anything touches a device. Idempotent.
    """
    global _initialized
    if _initialized:
        return True
    if not coordinator and not in_slurm_job():
        return False
    if jax.config.jax_platforms in (None, "", "cpu") and cpu_collectives:
        # Harmless on GPU machines (only the CPU backend reads it); required for CPU tests.
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {}
    if heartbeat_timeout_s is not None:
        kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout_s
    if coordinator:
        if num_processes < 1 or process_id < 0:
            raise ValueError("--coordinator needs --num_processes ≥ 1 and --process_id ≥ 0")
        jax.distributed.initialize(coordinator, num_processes=num_processes,
                                   process_id=process_id, **kwargs)
    else:
        jax.distributed.initialize(**kwargs)
    _initialized = True
    return True


def initialize_from_config(config) -> bool:
    d = config.distributed
    return initialize(d.coordinator, d.num_processes, d.process_id, d.cpu_collectives,
                      heartbeat_timeout_s=d.heartbeat_timeout_s)


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
