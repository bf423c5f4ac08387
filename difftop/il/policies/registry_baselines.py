"""The baseline imitation policies by name, as ``"module:Class"`` paths (imported on demand).

Every class is built as ``Cls(shape_meta, **hyper_parameters)``. ``residual`` also needs
``base=<a built and loaded Policy>``; ``ibc`` takes an optional ``init_policy=<Policy>`` (the
paper's "IBC + Diffusion"). The trainer merges this into the full policy registry.
"""

BASELINES: dict[str, str] = {
    "bc": "difftop.il.policies.bc:BCPolicy",
    "bc_rnn": "difftop.il.policies.bc_rnn:BCRNNPolicy",
    "diffusion": "difftop.il.policies.diffusion:DiffusionPolicy",
    "ibc": "difftop.il.policies.ibc:IBCPolicy",
    "residual": "difftop.il.policies.residual:ResidualPolicy",
}
