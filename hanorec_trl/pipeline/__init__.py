"""The whole HaNoRec job in one call: data -> SFT -> hardness -> HaNo DPO -> evaluation -> report.

See ``docs/pipeline.md``. The example scripts in ``examples/`` are thin wrappers around :func:`main`::

    python examples/train_movielens.py                      # embedded CPU demo (synthetic data, tiny model)
    accelerate launch examples/train_movielens.py --config examples/recipes/movielens/qwen2.5-vl-3b/hano.yaml

Programmatic use::

    from hanorec_trl.pipeline import PipelineConfig, run_pipeline
    results = run_pipeline(parse_args([]))                  # the same embedded demo
    config = parse_args(["--config", "recipe.yaml", "--sft.learning_rate", "3e-4"])
"""

from .arguments import (
    SECTIONS,
    TRL_SECTION_DEFAULTS,
    DataArguments,
    EvalArguments,
    HardnessArguments,
    PipelineConfigError,
    ProtocolArguments,
    RunArguments,
)
from .command_line import make_parser, parse_args
from .flat_names import translate_flat
from .pipeline_config import PipelineConfig, make_config
from .rundir import RunDir, RunDirError
from .run import main, main_ablations, run_pipeline
from .variants import ABLATION_VARIANTS, Variant

__all__ = [
    "ABLATION_VARIANTS",
    "DataArguments",
    "EvalArguments",
    "HardnessArguments",
    "PipelineConfig",
    "PipelineConfigError",
    "ProtocolArguments",
    "RunArguments",
    "RunDir",
    "RunDirError",
    "SECTIONS",
    "TRL_SECTION_DEFAULTS",
    "Variant",
    "main",
    "main_ablations",
    "make_config",
    "make_parser",
    "parse_args",
    "run_pipeline",
    "translate_flat",
]
