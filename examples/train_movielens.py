"""SFT -> HaNoRec preference optimization -> evaluation on MovieLens-1M (or its synthetic twin), one command.

    python examples/train_movielens.py                                   # embedded CPU demo, no files needed
    python examples/train_movielens.py --config examples/recipes/movielens/smollm2/hano.yaml \
        --data.data_dir ../shared/data/ml-1m                             # real data, real text LLM
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/train_movielens.py \
        --config examples/recipes/movielens/qwen2.5-vl-3b/hano.yaml --data.data_dir /data/ml-1m

Every argument: ``python examples/train_movielens.py --help`` and docs/pipeline.md.
"""

from hanorec_trl.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(dataset="movielens"))
