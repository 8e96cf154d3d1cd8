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
from PIL import Image  # noqa: E402

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
    from hanorec_trl.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_processor(tiny_tok):
    from hanorec_trl.models import qwen2_5_vl_processor

    # 56x56 images -> 4x4 patches -> 4 image tokens each
    return qwen2_5_vl_processor(tiny_tok, min_pixels=28 * 28, max_pixels=56 * 56)


@pytest.fixture
def tiny_vlm(tiny_tok):
    from hanorec_trl.models import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl(tiny_tok)


@pytest.fixture
def tiny_lm(tiny_tok):
    from hanorec_trl.models import tiny_qwen2

    return tiny_qwen2(tiny_tok)


def solid_image(seed: int, size: int = 56) -> Image.Image:
    """A small deterministic RGB image (a colour gradient that depends on ``seed``)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    grid = np.linspace(0, 60, size, dtype=np.float32)
    arr = (base[None, None, :] + grid[:, None, None] + grid[None, :, None]) % 255
    return Image.fromarray(arr.astype(np.uint8))
