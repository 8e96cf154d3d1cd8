"""The CLI reference of ``docs/pipeline.md``, generated from the dataclasses by :func:`help_table` (a test keeps
the document and the code the same)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .arguments import PIPELINE_SECTIONS, PIPELINE_SET, TRL_SECTION_DEFAULTS
from .flat_names import FLAT_NAMES


def _default_text(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def help_table() -> str:
    """The CLI reference in Markdown (``docs/pipeline.md``), generated from the dataclasses: the pipeline's sections
    field by field, and for TRL's sections the pipeline's defaults (every other field keeps TRL's default)."""
    lines = []
    for section, cls in PIPELINE_SECTIONS.items():
        lines += [f"\n### `{section}:` ({cls.__name__})\n", cls.__doc__.strip().splitlines()[0] + "\n",
                  "| argument | default | help |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            text = f.metadata.get("help", "").replace("|", "\\|")
            choices = f.metadata.get("choices")
            if choices:
                text += f" Choices: {', '.join(map(str, choices))}."
            lines.append(f"| `--{section}.{f.name}` | `{_default_text(f)}` | {text} |")
    owners = {"model": "trl.ModelConfig", "sft": "trl.SFTConfig", "dpo": "hanorec_trl.HaNoDPOConfig"}
    for section, owner in owners.items():
        lines += [f"\n### `{section}:` ({owner})\n",
                  f"Every field of `{owner}`, validated by it (`--{section}.<field> value`). The pipeline's defaults "
                  "where they differ from the class's own:\n", "| argument | pipeline default |", "|---|---|"]
        for name, value in TRL_SECTION_DEFAULTS[section].items():
            lines.append(f"| `--{section}.{name}` | `{value}` |")
        for name in PIPELINE_SET.get(section, ()):
            lines.append(f"| `--{section}.{name}` | set by the pipeline: `<run_dir>/{section}/.../trainer` |")
    lines += ["\n### Flat names of earlier versions\n",
              "Translated by `hanorec_trl.pipeline.translate_flat` (in recipes and on the command line):\n",
              "| earlier | now |", "|---|---|"]
    for old, new in FLAT_NAMES.items():
        lines.append(f"| `{old}` | {', '.join(f'`{t}`' for t in new)} |")
    return "\n".join(lines) + "\n"


__all__ = ["help_table"]
