"""The usage example of docs/item_tokens.md runs as written, on the tiny models of hanorec_trl.testing."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "item_tokens.md"


def usage_snippet() -> str:
    """The first Python block of the section "Usage"."""
    section = DOC.read_text(encoding="utf-8").split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_usage_example_runs(capsys):
    names: dict = {}
    exec(compile(usage_snippet(), str(DOC), "exec"), names)
    metrics, vocab, test = names["metrics"], names["vocab"], names["test"]
    assert metrics["num_ranking_rows"] == len(test) and 0.0 <= metrics["hr@1"] <= 1.0
    assert names["every_item"].shape == (len(test), len(vocab))
    # the reloaded model scores as the trained one
    from hanorec_trl.evaluation.scoring import score_first_tokens

    trained = score_first_tokens(names["trainer"].model, names["trainer"].processing_class, test["prompt"][:2],
                                 test["candidates"][:2], progress=False)
    again = score_first_tokens(names["reloaded"], names["tokenizer"], test["prompt"][:2], test["candidates"][:2],
                               progress=False)
    assert all((a == b).all() for a, b in zip(trained, again))
    assert str(metrics["hr@1"]) in capsys.readouterr().out
