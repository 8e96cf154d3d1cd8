"""The README's library snippet ("Use it as a library") runs as written, on a tiny model from hanorec_trl.testing."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def library_snippet() -> str:
    """The first Python block of the README's section "Use it as a library"."""
    section = README.read_text(encoding="utf-8").split("## Use it as a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_snippet_runs(tmp_path, monkeypatch):
    from hanorec_trl.testing import (
        random_item_embeddings,
        tiny_preference_dataset,
        tiny_qwen2_5_vl,
        tiny_tokenizer,
        tiny_vl_processor,
    )

    monkeypatch.chdir(tmp_path)  # the snippet writes to ./hano-dpo
    tokenizer = tiny_tokenizer()
    text_embeddings, image_embeddings, item_rows = random_item_embeddings()
    names = dict(model=tiny_qwen2_5_vl(tokenizer), processor=tiny_vl_processor(tokenizer),
                 dpo_dataset=tiny_preference_dataset(8), text_embeddings=text_embeddings,
                 image_embeddings=image_embeddings, item_rows=item_rows)
    exec(compile(library_snippet(), str(README), "exec"), names)

    trainer = names["trainer"]
    assert trainer.state.global_step > 0
    assert {"prompt", "chosen", "rejected", "hano_lambda"} <= set(names["dpo_dataset"].column_names)
    logged = [h for h in trainer.state.log_history if "hano/eta" in h]
    assert logged and all(h["hano/eta"] == 1.0 for h in logged)  # a short run stays in the warm-up
    adapters = [n for n, _ in trainer.model.named_modules() if n.endswith("lora_A")]
    assert adapters and not any(".visual." in n for n in adapters)  # LoRA on the language model only

    trainer.create_model_card()  # TRL's model card cites HaNoRec (the trainer's _paper) and DPO
    card = (tmp_path / "hano-dpo" / "README.md").read_text(encoding="utf-8")
    assert "@misc{wang_hanorec" in card and "Adaptive Preference Optimization for" in card
    assert "rafailov2023direct" in card
