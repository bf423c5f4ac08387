"""The differentiable trajectory-optimization layer.

Knows nothing about RL, IL or simulators: a batched objective J(A) over actions in a box,
solvers, backward modes, and the latent-rollout objective builder. Everything else imports it.
"""

from .config import TrajOptConfig
from .info import FLAG_NAMES, TrajOptInfo
from .layer import BACKWARD_MODES, TrajOpt, optimize
from .objective import latent_objective, rollout, smooth_min
from .solvers import SOLVERS

__all__ = ["optimize", "TrajOpt", "TrajOptConfig", "TrajOptInfo", "FLAG_NAMES", "BACKWARD_MODES", "SOLVERS",
           "latent_objective", "rollout", "smooth_min"]
