"""The stages of a run: data -> model -> SFT -> hardness -> DPO (per variant) -> evaluation (per model).

Each stage function takes the :class:`~.context.RunContext`, works in its own folder of the run directory (see
:mod:`..rundir`), is skipped when that folder is marked finished (after checking that the arguments it depended on
did not change), and returns a small summary dict. Training stages run on every process (``accelerate launch``);
the others run on the main process while the rest wait.

One module per stage: :mod:`.data`, :mod:`.model` (also the models the stages hand on), :mod:`.sft`,
:mod:`.hardness` (also the saved DPO pairs), :mod:`.dpo` (also the shared reference log-probs), :mod:`.evaluation`
(also the baselines); :mod:`.context` (what they share, :func:`~.context.run_stage`) and
:mod:`.resumable_training` (training in a stage folder) below them. Each stage module's ``*_inputs`` function gives
what that stage records and compares on resume.
"""

from .context import RunContext, run_stage
from .data import load_data, stage_data, subsample_users
from .dpo import stage_dpo
from .evaluation import stage_baselines, stage_evaluate
from .hardness import stage_hardness
from .model import load_dpo_model, load_sft_model, stage_model
from .sft import stage_sft

__all__ = [
    "RunContext",
    "load_data",
    "load_dpo_model",
    "load_sft_model",
    "run_stage",
    "stage_data",
    "stage_dpo",
    "stage_baselines",
    "stage_evaluate",
    "stage_hardness",
    "stage_model",
    "stage_sft",
    "subsample_users",
]
