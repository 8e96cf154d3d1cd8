"""The example pipeline's machinery: stage folders identified by their content (:mod:`.stage`), the run directory
(:mod:`.run_dir`), strict recipe parsing on top of ``trl.TrlParser`` (:mod:`.parsing`), the models (:mod:`.models`),
training inside a stage (:mod:`.training`) and the recipe runner (:mod:`.recipe`). The stages themselves are the
scripts of :mod:`hanorec_trl.scripts`. See ``docs/pipeline.md``::

    python examples/train_movielens.py                                   # the embedded demo recipe
    python examples/train_movielens.py --recipe examples/recipes/movielens/smollm2 --data_dir ../shared/data/ml-1m
"""

from .parsing import ConfigError, parse_stage_args
from .recipe import RecipeArguments, main, run_recipe
from .stage import Stage, StageError

__all__ = ["ConfigError", "RecipeArguments", "Stage", "StageError", "main", "parse_stage_args", "run_recipe"]
