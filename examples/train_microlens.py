"""SFT -> HaNoRec preference optimization -> evaluation on MicroLens (needs the dataset files: --data.data_dir).

    python examples/train_microlens.py --config examples/recipes/microlens/qwen2.5-vl-3b/hano.yaml \
        --data.data_dir /data/MicroLens-50k
    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/train_microlens.py \
        --config examples/recipes/microlens/qwen2.5-vl-3b/hano.yaml --data.data_dir /data/MicroLens-50k

Every argument: ``python examples/train_microlens.py --help`` and docs/pipeline.md.
"""

from hanorec_trl.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(dataset="microlens"))
