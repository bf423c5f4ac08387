"""Model-based RL pieces around TD-MPC: the MPPI planner, its value estimate and TD-MPC's schedules."""

from difftop.rl.mppi import MPPIPlanner, estimate_value
from difftop.rl.schedules import linear_schedule

__all__ = ["MPPIPlanner", "estimate_value", "linear_schedule"]
