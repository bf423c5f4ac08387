"""difftop's defaults for Hydra's submitit launchers, ``hydra/launcher=submitit_slurm`` and
``hydra/launcher=submitit_local`` (the ``cluster`` extra: hydra-submitit-launcher).

The launchers are the plugin's own. What makes a pre-empted job resume lies elsewhere:

- SLURM sends the pre-emption signal (USR2 with submitit) before it stops a job; the engine holds it
  until the current unit is done and its checkpoint committed, then hands it to submitit
  (:class:`difftop.engine.loop._Interrupts`), which calls the launcher's ``checkpoint()`` and
  requeues the job with the same arguments;
- every multirun job runs with ``resume=true`` unless the command line sets ``resume``
  (:func:`difftop.launch.job_config`), so the requeued job continues from that checkpoint.

Why these configs replace the plugin's under the same names in Hydra's ConfigStore (:func:`register`):
users write ``hydra/launcher=submitit_slurm hydra.launcher.partition=gpu`` as with any Hydra app, and
get defaults sized for one difftop run and a requeue budget (the plugin's ``max_num_timeout=0`` would
end a run at its first time limit). A YAML file of the same name would instead be validated against
the plugin's schema, a behaviour Hydra deprecates.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

__all__ = ["SlurmConf", "LocalConf", "register"]


@dataclass
class SlurmConf(SlurmQueueConf):
    """``hydra/launcher=submitit_slurm``: the plugin's keys (submitit's names, passed on to sbatch:
    ``partition``, ``account``, ``qos``, ``gres``, ``constraint``, ``additional_parameters``, ...), with
    defaults for one difftop run per job."""

    timeout_min: int = 1440  # sbatch --time (minutes); a longer run is requeued at the limit and resumes
    gpus_per_node: int | None = 1  # sbatch --gpus-per-node (null: CPU-only jobs; or gres=gpu:a100:1)
    cpus_per_task: int | None = 8  # sbatch --cpus-per-task (torch uses them unless threads= is set)
    mem_gb: int | None = 32  # sbatch --mem
    # USR2 comes signal_delay_s (120) before the time limit: the run checkpoints after its current unit
    # and the job is requeued; this many time limits may be reached (pre-emptions do not count)
    max_num_timeout: int = 20


@dataclass
class LocalConf(LocalQueueConf):
    """``hydra/launcher=submitit_local``: every job in its own process on this machine, all started at
    once (mind the cores: ``threads=`` per job). ``gpus_per_node=N`` shows GPUs 0..N-1 to every job;
    null (the default) shows none."""

    timeout_min: int = 10080  # the local controller signals a job after this long (USR2) and requeues it
    # no %j folder per job: submitit's local controller opens its log files in the %j folder before the
    # submitting process has created it (a race seen once in CI under load: FileNotFoundError)
    submitit_folder: str = "${hydra.sweep.dir}/.submitit"


def register() -> None:
    """Put :class:`SlurmConf` and :class:`LocalConf` in Hydra's ConfigStore under the plugin's names.

    Hydra's plugin scan executes the plugin's config module again (its registration would replace
    ours), so the scan is done first; it happens once per process."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()
    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="submitit_slurm", node=SlurmConf, provider="difftop")
    store.store(group="hydra/launcher", name="submitit_local", node=LocalConf, provider="difftop")
