"""Each section's values into its dataclass: text typed as the field wants it (``HfArgumentParser``'s types and
choices), unknown field names refused with the closest ones, and the dataclass built, so that TRL's own
``__post_init__`` validates the TRL sections. :func:`build_sections` gives every section of a run, the pipeline's
defaults (:data:`~.arguments.TRL_SECTION_DEFAULTS`) under the values given.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
from collections.abc import Sequence
from typing import Any

from .arguments import (
    PIPELINE_SECTIONS,
    PIPELINE_SET,
    SECTIONS,
    TRL_SECTION_DEFAULTS,
    PipelineConfigError,
    trl_section_classes,
)

_PARSERS: dict[type, Any] = {}


def _parser(cls: type):
    from transformers import HfArgumentParser

    if cls not in _PARSERS:
        _PARSERS[cls] = HfArgumentParser(cls, exit_on_error=False)
    return _PARSERS[cls]


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def unknown_field(section: str, cls: type, names: Sequence[str]) -> PipelineConfigError:
    known = sorted(field_names(cls))
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=3)
        parts.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return PipelineConfigError(f"{section}: {', '.join(parts)} is not a field of {cls.__name__} (section "
                               f"'{section}:'; every field of {cls.__module__}.{cls.__name__} is accepted)")


def typed_value(section: str, cls: type, name: str, value: Any) -> Any:
    """A YAML scalar given as text (YAML reads ``1e-4`` as a string) converted by the field's argparse type."""
    if not isinstance(value, str):
        return value
    action = _parser(cls)._option_string_actions.get(f"--{name}")
    kind = getattr(action, "type", None)
    if action is None or kind in (None, str) or action.nargs not in (None, "?"):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise PipelineConfigError(f"{section}.{name}: {value!r} is not valid ({e})") from None


def cli_values(section: str, cls: type, tokens: list[str]) -> dict[str, Any]:
    """``--field value...`` tokens of one section, typed by ``HfArgumentParser`` (choices checked there)."""
    parser = _parser(cls)
    given = []
    for token in tokens:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            if name not in field_names(cls) and name.startswith("no_") and name[3:] in field_names(cls):
                name = name[3:]
            if name not in field_names(cls):
                raise unknown_field(section, cls, [name])
            given.append(name)
    import argparse
    import contextlib

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace, rest = parser.parse_known_args(tokens)
    except argparse.ArgumentError as e:
        name = (e.argument_name or "").split("/")[0].removeprefix("--")
        raise PipelineConfigError(f"--{section}.{name}: {e.message}") from None
    except SystemExit:
        detail = errors.getvalue().strip().splitlines()
        raise PipelineConfigError(f"{section}: {detail[-1] if detail else 'cannot read ' + ' '.join(tokens)}") \
            from None
    if rest:
        raise PipelineConfigError(f"{section}: cannot read {' '.join(rest)}")
    return {name: getattr(namespace, name) for name in given}


def build_section(section: str, cls: type, values: dict[str, Any]):
    """The section's dataclass from its values; TRL's ``__post_init__`` validates them."""
    unknown = [name for name in values if name not in field_names(cls)]
    if unknown:
        raise unknown_field(section, cls, unknown)
    values = {name: typed_value(section, cls, name, value) for name, value in values.items()}
    if section in ("sft", "dpo"):
        values.setdefault("output_dir", "trainer_output")
        values["use_cpu"] = True  # device checks are the pipeline's (at the start of a run), not the parser's
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return cls(**values)
    except (TypeError, ValueError) as e:
        raise PipelineConfigError(f"{section}: {cls.__name__} refuses these values: {e}") from None


def section_classes() -> dict[str, type]:
    """Every section's dataclass: the pipeline's own, then ``model`` / ``sft`` / ``dpo`` (TRL's)."""
    return {**PIPELINE_SECTIONS, **trl_section_classes()}


def build_sections(sections: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every section's dataclass from section values (missing fields: the pipeline's defaults), and the values that
    were set per section (``PipelineConfig.explicit``)."""
    explicit = {name: {**TRL_SECTION_DEFAULTS.get(name, {}), **sections.get(name, {})} for name in SECTIONS}
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise PipelineConfigError(f"unknown section(s) {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    for name in ("sft", "dpo"):
        for pinned in PIPELINE_SET[name]:
            if pinned in sections.get(name, {}):
                raise PipelineConfigError(f"{name}.{pinned} is set by the pipeline (the stage's folder of the run "
                                          "directory); choose the run directory with run.run_dir")
    classes = section_classes()
    built = {name: build_section(name, classes[name], explicit[name]) for name in SECTIONS}
    return built, explicit


__all__ = [
    "build_section",
    "build_sections",
    "cli_values",
    "field_names",
    "section_classes",
    "typed_value",
    "unknown_field",
]
