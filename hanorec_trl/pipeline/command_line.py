"""Reading a run's arguments: ``--config recipe.yaml`` and ``--<section>.<field> value`` overrides.

Defaults, then the recipe, then the command line, each section's values into its dataclass (:mod:`.section_values`):
``--sft.learning_rate 3e-4``, ``--dpo.beta 0.2``, ``--model.lora_r 16``, ``--dpo.no_use_hardness``, any field of any
section. The flat recipes and flags of earlier versions (``--sft_learning_rate``, ``--output_dir``...) are translated
by :func:`~hanorec_trl.pipeline.flat_names.translate_flat` (table in ``docs/pipeline.md``).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arguments import ARGUMENT_CLASSES, SECTIONS, PipelineConfigError
from .flat_names import FLAT_LIST_NAMES, FLAT_NAMES, is_flat_recipe, translate_flat
from .pipeline_config import PipelineConfig, make_config
from .section_values import cli_values, field_names, section_classes, typed_value, unknown_field


def _split_command_line(argv: Sequence[str]) -> tuple[str | None, dict[str, list[str]], dict[str, Any]]:
    """``--config``, the ``--section.field`` tokens by section, and the flat flags of earlier versions."""
    recipe, sections, flat = None, {}, {}
    k, args = 0, list(argv)
    while k < len(args):
        token = args[k]
        if not token.startswith("--"):
            raise PipelineConfigError(f"unexpected argument {token!r}: write '--<section>.<field> value'")
        name, _, inline = token[2:].partition("=")
        values = [inline] if "=" in token else []
        k += 1
        while k < len(args) and not args[k].startswith("--") and "=" not in token:
            values.append(args[k])
            k += 1
        if name == "config":
            if len(values) != 1:
                raise PipelineConfigError("--config takes one recipe file")
            recipe = values[0]
        elif "." in name:
            section, field_name = name.split(".", 1)
            if section not in SECTIONS:
                close = difflib.get_close_matches(section, SECTIONS, n=2)
                raise PipelineConfigError(f"--{name}: no section {section!r}; the sections are {', '.join(SECTIONS)}"
                                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
            sections.setdefault(section, []).extend([f"--{field_name}", *values])
        else:  # a flag of earlier versions: --sft_learning_rate 1e-4, --no_use_hardness, --eval_ks 1 3
            key = name.replace("-", "_")
            if key.startswith("no_") and key[3:] in FLAT_NAMES and not values:
                flat[key[3:]] = False
            elif not values:
                flat[key] = True
            else:
                flat[key] = values if len(values) > 1 or key in FLAT_LIST_NAMES else values[0]
    return recipe, sections, flat


def _load_recipe(path: str) -> dict[str, dict[str, Any]]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PipelineConfigError(f"--config {path}: cannot read it ({e})") from None
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise PipelineConfigError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict):
        raise PipelineConfigError(f"--config {path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    if is_flat_recipe(recipe):
        if any(key in SECTIONS and isinstance(value, dict) for key, value in recipe.items()):
            raise PipelineConfigError(f"--config {path} mixes sections and top-level fields; write every field "
                                      f"inside its section ({', '.join(SECTIONS)})")
        return translate_flat(recipe)
    for key, value in recipe.items():
        if value is not None and not isinstance(value, dict):
            raise PipelineConfigError(f"--config {path}: section {key!r} must be a mapping of fields")
    return {key: dict(value or {}) for key, value in recipe.items()}


def _from_flat_command_line(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat flags of earlier versions -> typed section values (strings typed as the new field's type)."""
    nested = translate_flat(flat)
    classes = section_classes()
    out: dict[str, dict[str, Any]] = {}
    for section, values in nested.items():
        cls = classes[section]
        typed = {}
        for name, value in values.items():
            if name not in field_names(cls):
                raise unknown_field(section, cls, [name])
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                typed[name] = cli_values(section, cls, [f"--{name}", *value])[name]
            elif isinstance(value, bool):
                typed[name] = value
            else:
                typed[name] = typed_value(section, cls, name, value)
        out[section] = typed
    return out


def parse_sections(argv: Sequence[str], defaults: dict[str, dict[str, Any]] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """``argv`` -> section values (recipe, then command line; the flat forms of earlier versions translated) and the
    recipe path."""
    recipe, tokens, flat = _split_command_line(argv)
    values: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (defaults or {}).items()}

    def merge(update: dict[str, dict[str, Any]]) -> None:
        for section, fields_ in update.items():
            values.setdefault(section, {}).update(fields_)

    if recipe is not None:
        merge(_load_recipe(recipe))
    merge(_from_flat_command_line(flat))
    classes = section_classes()
    merge({section: cli_values(section, classes[section], section_tokens)
           for section, section_tokens in tokens.items()})
    return values, recipe


def parse_args(argv: Sequence[str] | None = None, *, dataset: str | None = None) -> PipelineConfig:
    """Parse ``--config recipe.yaml`` and ``--section.field value`` overrides into a validated
    :class:`PipelineConfig` (the flat forms of earlier versions are translated by :func:`translate_flat`).

    ``dataset`` is the example script's dataset (its default for ``data.dataset``); a recipe or the command line may
    not name another one.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage())
        raise SystemExit(0)
    defaults = {"data": {"dataset": dataset}} if dataset is not None else None
    values, _ = parse_sections(args, defaults)
    config = make_config(values)
    if dataset is not None and config.data.dataset != dataset and not (dataset == "movielens" and
                                                                       config.data.dataset == "custom"):
        raise PipelineConfigError(
            f"this script trains on {dataset!r} but the arguments say data.dataset {config.data.dataset!r}; use "
            f"examples/train_{config.data.dataset}.py or a {dataset} recipe"
        )
    config.validate()
    return config


def usage() -> str:
    return (
        "usage: python examples/train_<dataset>.py [--config recipe.yaml] [--<section>.<field> value ...]\n\n"
        f"sections: {', '.join(SECTIONS)}; model -> trl.ModelConfig, sft -> trl.SFTConfig, dpo -> "
        "hanorec_trl.HaNoDPOConfig (every field of each), the others the pipeline's own.\n"
        "e.g. --sft.learning_rate 3e-4 --dpo.beta 0.2 --model.lora_r 16 --protocol.max_train_sequences 64 "
        "--run.run_dir runs/x --run.resume\n"
        "Every field with its default: docs/pipeline.md (CLI reference)."
    )


def make_parser():
    """Kept for scripts that print the parser's help: the pipeline's sections as one ``HfArgumentParser``."""
    from transformers import HfArgumentParser

    return HfArgumentParser(ARGUMENT_CLASSES)


__all__ = ["make_parser", "parse_args", "parse_sections", "usage"]
