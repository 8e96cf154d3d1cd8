"""Issue 13 (reliability), the fast part: every bad input of docs/reliability.md gets what that table promises.

The trainer cases use the tiny text model for a few steps; the data cases small files written on the fly. The run
directory's cases (ownership, inputs inside it, the lock, unfinished stages, arguments refused before any stage,
kill -9 and Ctrl-C) are in tests/test_pipeline_reliability.py, on the stage folders of the pipeline of issue 27.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import preference_dataset, solid_image
from data_utils import small_movielens, write_movielens
from trainer_utils import make_trainer

from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer
from hanorec_trl.checkpoints import HANO_STATE_NAME, checkpoint_problem, last_complete_checkpoint
from hanorec_trl.data import DataFormatError, MissingImageWarning, load_movielens_1m
from hanorec_trl.data.movielens import read_movielens_movies
from hanorec_trl.data.recdata import ControlCharacterWarning
from hanorec_trl.testing import tiny_qwen2
from hanorec_trl.trainer import NonFiniteTrainingError

# ------------------------------------------------------------------------------------------------ 5. checkpoints


def _fake_checkpoint(folder: Path, step: int, *, hano: bool = True, state: bool = True) -> Path:
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(64)}, str(path / "adapter_model.safetensors"))
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    if hano:
        (path / HANO_STATE_NAME).write_text(json.dumps({"responsiveness": {}}))
    return path


def test_incomplete_checkpoints_are_skipped_for_the_previous_complete_one(tmp_path):
    good = _fake_checkpoint(tmp_path, 2)
    no_state = _fake_checkpoint(tmp_path, 4, state=False)
    truncated = _fake_checkpoint(tmp_path, 6)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    no_hano = _fake_checkpoint(tmp_path, 8, hano=False)
    assert "truncated" in checkpoint_problem(truncated)
    assert "trainer_state.json" in checkpoint_problem(no_state)
    assert checkpoint_problem(no_hano) is None and "hano_state.json" in checkpoint_problem(no_hano, hano_state=True)
    found, skipped = last_complete_checkpoint(tmp_path, hano_state=True)
    assert found == str(good) and [Path(p).name for p, _ in skipped] == ["checkpoint-8", "checkpoint-6",
                                                                          "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path)[0] == str(no_hano)  # without responsiveness the state is not needed


CONFIG = dict(max_steps=4, save_strategy="steps", save_steps=2, use_hardness=True, responsiveness_warmup=1,
              lora_noise_std=0.1)


def _per_step(history, key):
    return {h["step"]: h[key] for h in history if key in h}


def test_killed_right_after_the_checkpoint_write_resumes_bit_exact(tiny_tok, tmp_path, monkeypatch):
    """A kill between transformers' checkpoint write (which has already rotated the older checkpoint away) and the
    HaNo state write: the newest checkpoint must still hold the responsiveness state."""
    from transformers import Trainer

    ds = preference_dataset(n=8, with_images=False, lambdas=[0.8, 1.2] * 4)
    full = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "full", **CONFIG)
    full.train()

    original = Trainer._save_checkpoint

    def killed_after_step_4(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "_save_checkpoint", killed_after_step_4)
    cut = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "cut", save_total_limit=1, **CONFIG)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-4"]  # -2 rotated away
    assert (tmp_path / "cut" / "checkpoint-4" / HANO_STATE_NAME).is_file()

    # ... and a checkpoint without it is refused, not resumed with a fresh eta
    partial = _fake_checkpoint(tmp_path / "other", 2, hano=False)
    with pytest.raises(ValueError, match="hano_state.json"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "other", **CONFIG).train(
            resume_from_checkpoint=str(partial))

    # resuming the full run from step 2 with a newer partial checkpoint present: resume_from_checkpoint=True skips it
    resumed_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed_dir / "checkpoint-2")
    (resumed_dir / "checkpoint-4").mkdir()  # killed while writing: no trainer_state.json
    (resumed_dir / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"\x00" * 12)
    resumed = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, resumed_dir, **CONFIG)
    resumed.train(resume_from_checkpoint=True)
    for key in ("hano/eta", "loss"):
        got, want = _per_step(resumed.state.log_history, key), _per_step(full.state.log_history, key)
        for step in (3, 4):
            assert got[step] == pytest.approx(want[step], rel=1e-6), (key, step)
    assert _per_step(full.state.log_history, "hano/eta")[4] != 1.0  # eta moved: the comparison is not vacuous


# ------------------------------------------------------------------------------------------------ 6. bad values


@pytest.mark.parametrize(
    "fields, name",
    [
        (dict(beta=0.0), "beta"), (dict(beta=-0.1), "beta"), (dict(beta=float("nan")), "beta"),
        (dict(eta_max=0.0), "eta_max"), (dict(eta_max=float("nan")), "eta_max"), (dict(eta_min=-0.5), "eta_min"),
        (dict(eta_min=float("nan")), "eta_min"), (dict(responsiveness_warmup=-1), "responsiveness_warmup"),
        (dict(responsiveness_eps=-1e-3), "responsiveness_eps"), (dict(lora_noise_std=float("inf")), "lora_noise_std"),
        (dict(lora_noise_std=float("nan")), "lora_noise_std"), (dict(beta_floor=float("inf")), "beta_floor"),
        (dict(responsiveness_momentum=float("nan")), "responsiveness_momentum"), (dict(lambda_max=0.0), "lambda_max"),
    ],
)
def test_config_refuses_values_that_train_nothing_or_blow_up(fields, name, tmp_path):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        HaNoDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **fields)


def test_huge_lambda_is_refused_with_its_row(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0, 1e30, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"above lambda_max=100 \(row 1: 1e\+30\)"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path)


def test_non_finite_loss_or_gradient_stops_training_naming_the_step(tiny_tok, tmp_path):
    """A real overflow (lambda 1e30: an infinite gradient norm at step 2), not an injected NaN. By default such a step
    is skipped and training goes on (tests/test_trainer_reliability.py); max_nonfinite_steps=1 stops at the first."""
    ds = preference_dataset(n=8, with_images=False, lambdas=[1.0, 1e30] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, lambda_max=math.inf, use_responsiveness=False,
                           save_strategy="steps", save_steps=1, max_nonfinite_steps=1)
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.train()
    match = re.match(r"training stopped at step (\d+): the (loss|gradient norm) is (nan|inf|-inf) \(not finite\)",
                     str(info.value))
    assert match, str(info.value)
    step = int(match.group(1))
    # nothing of the bad step was applied or saved; the checkpoints before it are there
    assert not (tmp_path / f"checkpoint-{step}").exists()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in range(1, step)][-2:]


def test_sft_stage_stops_on_a_logged_non_finite_gradient_norm():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from hanorec_trl.nonfinite import StopOnNonFinite

    state, args = TrainerState(global_step=7), SimpleNamespace(output_dir="sft/trainer")
    StopOnNonFinite().on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": 2.0})
    with pytest.raises(NonFiniteTrainingError, match=r"step 7: the grad norm is nan .*sft/trainer"):
        StopOnNonFinite().on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": float("nan")})


def test_trainer_without_args_builds_on_cpu(tiny_tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from trainer_utils import lora_config

    model = tiny_qwen2(tiny_tok)
    trainer = HaNoDPOTrainer(model=model, args=None, processing_class=tiny_tok, peft_config=lora_config(model),
                             train_dataset=preference_dataset(n=2, with_images=False, lambdas=[1.0, 1.0]))
    assert isinstance(trainer.args, HaNoDPOConfig)


# ------------------------------------------------------------------------------------------------ 7. truncated images


def test_truncated_poster_gets_the_placeholder_or_a_strict_error(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    poster = folder / "posters" / "3.jpg"
    poster.write_bytes(poster.read_bytes()[: poster.stat().st_size // 2])  # header intact, pixel data cut
    data = load_movielens_1m(folder)
    with pytest.warns(MissingImageWarning, match=r"could not be read \(items '3'.*truncated"):
        assert data.verify_images() == ["3"]
    assert data.image_path("3") is None
    with pytest.raises(DataFormatError, match=r"items '3'.*truncated"):
        load_movielens_1m(folder, strict_images=True).verify_images()
    # the datasets image column never sees the cut file: the placeholder bytes go in its place
    from hanorec_trl.data import ProtocolConfig, build_sft_dataset, build_split

    ratings = [f"{u}::{(u - 1) * 4 + k}::4::{k}" for u in (1, 2, 3) for k in (1, 2, 3, 4)]
    movies = [f"{i}::Movie {i} (1999)::Drama" for i in range(1, 13)]
    posters = {str(i): solid_image(i) for i in range(1, 13)}
    data = load_movielens_1m(write_movielens(tmp_path / "ml2", ratings, movies, posters))
    cut = tmp_path / "ml2" / "posters" / "2.jpg"  # in the history of user 1
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    split = build_split(data, ProtocolConfig(min_interactions=3, sequence_length=3, num_candidates=3,
                                             auc_num_unwatched=1, split_ratios=(1.0, 0.0, 0.0)))
    with pytest.warns(MissingImageWarning, match="items .2."):
        rows = build_sft_dataset(split.train, data, task="ranking", with_images=True)
    for row in rows:  # every image decodes
        assert all(image.size[0] > 0 for image in row["images"])


# ------------------------------------------------------------------------------------------------ 8. text encoding


MOVIES = ["1::Amélie (2001)::Comedy", "2::Léon (1994)::Drama", "3::Plain (1999)::Drama"]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252"])
def test_movies_file_encoding_is_detected(tmp_path, encoding):
    path = tmp_path / "movies.dat"
    lines = MOVIES + (["4::Don’t Stop (2000)::Drama"] if encoding == "cp1252" else [])
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    _, titles, _ = read_movielens_movies(path)
    assert titles["1"] == "Amélie (2001)" and titles["2"] == "Léon (1994)"
    if encoding == "cp1252":
        assert titles["4"] == "Don’t Stop (2000)"


def test_an_explicit_encoding_that_does_not_fit_names_the_lines(tmp_path):
    path = tmp_path / "movies.dat"
    path.write_bytes("".join(line + "\n" for line in MOVIES).encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"2 line\(s\) are not valid utf-8 text \(lines 1, 2;"):
        read_movielens_movies(path, encoding="utf-8")
    assert read_movielens_movies(path, encoding="latin-1")[1]["1"] == "Amélie (2001)"


def test_control_characters_are_removed_with_one_warning_naming_the_items(tmp_path):
    folder = write_movielens(tmp_path / "ml", ["1::1::4::1", "1::2::4::2", "1::3::4::3"],
                             ["1::Nul\x00 Movie (1999)::Drama", "2::Esc\x1b[31m Red (2000)::Drama",
                              "3::Fine (2001)::Drama"])
    with pytest.warns(ControlCharacterWarning) as record:
        data = load_movielens_1m(folder, images=False)
    messages = [str(w.message) for w in record if issubclass(w.category, ControlCharacterWarning)]
    assert len(messages) == 1 and "items '1', '2'" in messages[0]
    assert data.titles == {"1": "Nul Movie (1999)", "2": "Esc[31m Red (2000)", "3": "Fine (2001)"}


# ------------------------------------------------------------------------------------------------ 9. data arguments


def test_bad_image_pattern_and_negative_ratings_are_named(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    with pytest.raises(ValueError, match=r"image pattern '\{item_id\}\{0\}.jpg' is not a valid pattern"):
        load_movielens_1m(folder, image_pattern="{item_id}{0}.jpg")
    bad = write_movielens(tmp_path / "neg", ["1::1::4::1", "1::2::-3::2"], ["1::A (1999)::Drama", "2::B (1999)::Drama"])
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: a rating must be a finite number >= 0, got '-3'"):
        load_movielens_1m(bad, images=False)


# ------------------------------------------------------------------------------------------------ the promise


def test_reliability_doc_lists_every_test_of_this_issue():
    """docs/reliability.md is the promise to users: each row names the test that keeps it true."""
    tests = Path(__file__).resolve().parent
    doc = (tests.parent / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", doc))
    everywhere = "".join(p.read_text() for p in sorted(tests.glob("test_*.py")))
    missing = sorted(name for name in named if f"def {name}(" not in everywhere)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    ours = Path(__file__).read_text() + (tests / "test_pipeline_reliability.py").read_text()
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)\(", ours, flags=re.M))
    unlisted = sorted(defined - named - {"test_reliability_doc_lists_every_test_of_this_issue"})
    assert not unlisted, f"tests of issue 13 missing from docs/reliability.md: {unlisted}"
