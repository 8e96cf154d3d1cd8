"""The README's quickstart snippet runs as pasted (it builds its tiny models from hanorec_trl.testing itself)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def library_snippet() -> str:
    """The first Python block of the README's section "Quickstart"."""
    section = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippet writes to ./hano-dpo
    names: dict = {}
    exec(compile(library_snippet(), str(README), "exec"), names)  # as pasted: it defines every name it uses

    trainer = names["trainer"]
    assert trainer.state.global_step == 2
    assert {"prompt", "chosen", "rejected", "hano_lambda"} <= set(names["dataset"].column_names)
    logged = [h for h in trainer.state.log_history if "hano/eta" in h]
    assert logged and all(h["hano/eta"] == 1.0 for h in logged)  # a short run stays in the warm-up
    assert all("hano/lambda_mean" in h for h in logged)
    adapters = [n for n, _ in trainer.model.named_modules() if n.endswith("lora_A")]
    assert adapters and not any(".visual." in n for n in adapters)  # LoRA on the language model only

    trainer.create_model_card()  # TRL's model card cites HaNoRec (the trainer's _paper) and DPO
    card = (tmp_path / "hano-dpo" / "README.md").read_text(encoding="utf-8")
    assert "@misc{wang_hanorec" in card and "Adaptive Preference Optimization for" in card
    assert "rafailov2023direct" in card
