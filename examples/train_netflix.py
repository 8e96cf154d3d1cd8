"""SFT -> hardness -> HaNo DPO -> evaluation -> report on Netflix (LLMRec): every stage of a recipe folder, in order.

    accelerate launch examples/train_netflix.py                                      # recipe smollm2
    accelerate launch examples/train_netflix.py --recipe examples/recipes/netflix/qwen2.5-vl-3b --data_dir /data/netflix

Netflix (the LLMRec release) has no synthetic twin: --data_dir names the dataset folder (docs/data.md).
Each stage also runs alone (python -m hanorec_trl.scripts.<stage> --config <recipe>/<stage>.yaml ...);
--resume continues a run, --help lists the options, docs/pipeline.md explains the recipe files.
"""

from pathlib import Path

from hanorec_trl.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(default_recipe=Path(__file__).parent / "recipes" / "netflix" / "smollm2"))
