"""The stages of the example pipeline as TRL-style scripts: each has ``main(...)`` taking its parsed dataclasses and
runs alone (``python -m hanorec_trl.scripts.<stage> --config <stage>.yaml --field value``) or in order from a recipe
folder (``examples/train_movielens.py``, :mod:`hanorec_trl.pipeline.recipe`). See ``docs/pipeline.md``.

``data`` -> ``sft`` -> ``hardness`` -> ``dpo`` -> ``evaluate`` -> ``report``.
"""
