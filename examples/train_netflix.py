"""SFT -> HaNoRec preference optimization -> evaluation on Netflix as released by LLMRec (needs --data.data_dir).

    python examples/train_netflix.py --config examples/recipes/netflix/qwen2.5-vl-3b/hano.yaml \
        --data.data_dir /data/netflix
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/train_netflix.py \
        --config examples/recipes/netflix/qwen2.5-vl-3b/hano.yaml --data.data_dir /data/netflix

Netflix has no timestamps: a user's sequence is the file order (docs/data.md). Every argument: --help.
"""

from hanorec_trl.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(dataset="netflix"))
