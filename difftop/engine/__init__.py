"""The run engine shared by every long command: see :mod:`difftop.engine.loop`."""

from difftop.engine.faults import crash_point
from difftop.engine.loop import Context, Loop, global_rng_state, run, set_global_rng_state, validate_run_keys
from difftop.engine.rundir import RunSpec, explicit_keys, open_run

__all__ = ["Context", "Loop", "RunSpec", "crash_point", "explicit_keys", "global_rng_state", "open_run",
           "run", "set_global_rng_state", "validate_run_keys"]
