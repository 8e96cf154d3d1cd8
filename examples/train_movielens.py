"""SFT -> hardness -> HaNo DPO -> evaluation -> report on MovieLens-1M: every stage of a recipe folder, in order.

    accelerate launch examples/train_movielens.py                                    # recipe tiny
    accelerate launch examples/train_movielens.py --recipe examples/recipes/movielens/qwen2.5-vl-3b --data_dir ml-1m

With no arguments: the embedded demo (synthetic data, a tiny Qwen2.5-VL, about two minutes on a CPU).
Each stage also runs alone (python -m hanorec_trl.scripts.<stage> --config <recipe>/<stage>.yaml ...);
--resume continues a run, --help lists the options, docs/pipeline.md explains the recipe files.
"""

from pathlib import Path

from hanorec_trl.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(default_recipe=Path(__file__).parent / "recipes" / "movielens" / "tiny"))
