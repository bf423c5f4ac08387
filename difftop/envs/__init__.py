"""Environments as gymnasium envs, one adapter module per simulator family.

Importing this package is cheap: simulators (dm_control, MuJoCo, ...) are imported only when an
environment is built. It registers the gymnasium ids ``difftop/dmc-<task>-v0`` (the paper's DMC
tasks) and ``difftop/dmc-v0`` (any dm-control task, ``task=...``).
"""

from difftop.envs.dmc import (
    ACTION_REPEAT,
    DMC_TASKS,
    default_action_repeat,
    make_env,
    register_envs,
    task_key,
)
from difftop.envs.pusht import get_sim_state, make_pusht, set_sim_state

register_envs()

__all__ = ["ACTION_REPEAT", "DMC_TASKS", "default_action_repeat", "get_sim_state", "make_env", "make_pusht",
           "set_sim_state", "task_key"]
