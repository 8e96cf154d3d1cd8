"""Shared fixtures: tiny models of the real architectures, built offline, and small synthetic data."""

import os
import warnings
from pathlib import Path

# Never touch a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hanorec_trl.testing import TINY_TITLES, solid_image  # noqa: E402, F401  (solid_image: used by the tests)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; the test is skipped, with the reason, when it is absent (a user's machine)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the project's shared data folder (present in CI)")
    return path


@pytest.fixture(scope="session")
def tiny_tok():
    from hanorec_trl.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_processor(tiny_tok):
    from hanorec_trl.processing import qwen2_5_vl_processor

    # 56x56 images -> 4x4 patches -> 4 image tokens each
    return qwen2_5_vl_processor(tiny_tok, min_pixels=28 * 28, max_pixels=56 * 56)


@pytest.fixture
def tiny_vlm(tiny_tok):
    from hanorec_trl.testing import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl(tiny_tok)


@pytest.fixture
def tiny_lm(tiny_tok):
    from hanorec_trl.testing import tiny_qwen2

    return tiny_qwen2(tiny_tok)


TITLES = list(TINY_TITLES)


def preference_rows(n: int = 6, with_images: bool = True, lambdas=None, seed: int = 0) -> list[dict]:
    """Small ranking-style preference rows (paper Fig. 6b shape: history + candidates, quoted-title answers)."""
    from hanorec_trl.data.prompts import DEFAULT_TEMPLATES, assistant_message, ranking_prompt

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        picks = rng.permutation(len(TITLES))
        hist, cands = picks[:2], picks[2:5]
        target, negative = cands[0], cands[1 + i % 2]
        images = (lambda idx: [solid_image(int(j)) for j in idx]) if with_images else (lambda idx: None)
        prompt, imgs = ranking_prompt(
            [TITLES[j] for j in hist], [TITLES[j] for j in cands], images(hist), images(cands)
        )
        row = {
            "prompt": prompt,
            "chosen": assistant_message(DEFAULT_TEMPLATES.answer_text(TITLES[target]), with_images),
            "rejected": assistant_message(DEFAULT_TEMPLATES.answer_text(TITLES[negative]), with_images),
        }
        if with_images:
            row["images"] = imgs
        if lambdas is not None:
            row["hano_lambda"] = float(lambdas[i])
        rows.append(row)
    return rows


def preference_dataset(**kwargs):
    from datasets import Dataset

    return Dataset.from_list(preference_rows(**kwargs))
