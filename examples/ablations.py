"""The ablations of paper Sec. 4.3 on one SFT model: HaNoRec, w/o HaRS, w/o SAM, w/o NoDO, w/o ALL (plain DPO),
plus SFT-only, sharing the data and SFT stages; prints one table.

    python examples/ablations.py                                         # embedded CPU demo (MovieLens format)
    python examples/ablations.py --config examples/recipes/movielens/smollm2/hano.yaml \
        --data.data_dir ../shared/data/ml-1m
    python examples/ablations.py --data.dataset microlens --config ... --data.data_dir ...

The same arguments as the training scripts (run.method and run.ablation are ignored: every variant runs;
--run.variants picks some).
"""

from hanorec_trl.pipeline import main_ablations

if __name__ == "__main__":
    raise SystemExit(main_ablations())
