"""The whole HaNoRec job in one call: data -> SFT -> hardness -> HaNo DPO -> evaluation -> report.

See ``docs/pipeline.md``. The example scripts in ``examples/`` are thin wrappers around :func:`main`::

    python examples/train_movielens.py                      # embedded CPU demo (synthetic data, tiny model)
    accelerate launch examples/train_movielens.py --config examples/recipes/movielens/qwen2.5-vl-3b/hano.yaml

Programmatic use::

    from hanorec_trl.pipeline import PipelineConfig, run_pipeline
    results = run_pipeline(PipelineConfig())                # the same embedded demo
"""

from .arguments import (
    ABLATION_VARIANTS,
    DataArguments,
    DPOArguments,
    EvalArguments,
    ModelArguments,
    PipelineConfig,
    PipelineConfigError,
    RunArguments,
    SFTArguments,
    Variant,
    make_parser,
    parse_args,
)
from .rundir import RunDir, RunDirError
from .run import main, main_ablations, run_pipeline

__all__ = [
    "ABLATION_VARIANTS",
    "DPOArguments",
    "DataArguments",
    "EvalArguments",
    "ModelArguments",
    "PipelineConfig",
    "PipelineConfigError",
    "RunArguments",
    "RunDir",
    "RunDirError",
    "SFTArguments",
    "Variant",
    "main",
    "main_ablations",
    "make_parser",
    "parse_args",
    "run_pipeline",
]
