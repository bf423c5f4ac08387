"""Diagnostics: probes that load trained runs (or build agents) and measure one thing, each runnable as
``python -m difftop.diagnostics.<name> --help``. The results/ READMEs quote their output with the exact
command. Nothing in the library imports this package.

RL (state runs: a run directory with its checkpoint and, for most, its replay buffer):

- ``acting_probe``: one learned model acting three ways (the solve, MPPI, pi alone) on the same episodes.
- ``action_spread``: how much training-time actions vary on the same state (exploration).
- ``batch_rounding``: whether an evaluation solve's action depends on the batch it is solved in.
- ``pg_gradient_quality``: the PG gradient through solves cut short against converged ones.
- ``bounds_gradient``: how often the PG gradient is exactly zero under each ``trajopt.bounds`` option and the
  release's LM refinement (issue 31).
- ``fixed_data_paired``: from one checkpoint and its replay buffer, the same minibatches with and without the
  PG loss through the solve, both agents then scored on the same episodes (issue 31).
- ``memory_cap_probe``: the L-BFGS-memory implicit gradient with a capped condition number.
- ``reacher_buffer_stats``: where reacher-easy runs spent their training time (replay buffers).
- ``solve_stats``, ``model_losses``: per-run summaries of train.csv (solves, PG steps, model losses).
- ``eval_lockstep_timing``: one evaluation one episode at a time vs in lockstep.
- ``conv_layout_timing``: TD-MPC's conv stack in NCHW vs channels-last on the CPU.
- ``buffer_gather_timing``: a pixel minibatch gathered on the host vs by torch indexing.
- ``act_op_counts``: tensor ops (and host syncs) per act, a planning figure for GPUs.
- ``rl_table``: final returns per task and agent over seeds, and paired differences (each DiffTOP arm with its
  no-backward twin, with a bootstrap interval).

IL (Push-T runs: a run directory with its checkpoint):

- ``refinement``: how far and how well Residual and DiffTOP move their frozen base's action.
- ``error_structure``: which part of a base's action error a refiner can learn, and in which form.
- ``objective_slope``: how steep a trained DiffTOP objective is at its base's action.
- ``open_loop``: open-loop action error on demonstration episodes.
- ``il_table``: the Push-T results in the layout of the paper's Tables 1 and 3.
"""
