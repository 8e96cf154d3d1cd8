"""Reading a stage's configuration the way TRL's scripts do, with the checks TRL's parser leaves out.

Every stage script is parsed by :class:`StageParser`, a :class:`trl.TrlParser`: ``--config stage.yaml`` sets the
defaults of the stage's dataclasses (raw fields of ``SFTConfig``, ``HaNoDPOConfig``, ``ModelConfig`` and the stage's
own arguments), flags on the command line override them, an unknown key is an error. On top of TRL's parser:

* the YAML file is read as UTF-8 (an undecodable byte is an error naming the file and line), a key given twice in one
  mapping is refused, alias expansion is bounded (a few hundred bytes of anchors cannot expand into gigabytes), and
  ``3e-4`` is a number (YAML 1.2; PyYAML alone reads it as a string);
* a second ``--config`` is an error instead of being dropped;
* a YAML value of the wrong type for its field (``max_steps: 2.7``) or outside the field's choices is refused naming
  the field and the file: argparse converts and checks only values typed on the command line, not defaults;
* the values that would fail only once training runs are refused with the rest (:func:`check_values`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from trl import TrlParser

MAX_YAML_NODES = 100_000  # after alias expansion; real recipes have a few hundred


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, the key or the flag."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats (``1e-4``)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{self.name}: key {key!r} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _expanded_size(node, memo: dict[int, int]) -> int:
    """Number of nodes ``node`` stands for once every alias is expanded (a shared node counts every time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once; PyYAML refuses to construct it anyway
        children = node.value if isinstance(node.value, list) else []
        flat = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        memo[key] = 1 + sum(_expanded_size(child, memo) for child in flat)
    return memo[key]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a recipe file, read strictly (see the module docstring)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: byte 0x{raw[err.start]:02x} is not UTF-8; save the recipe as "
                          "UTF-8") from None
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{path}: its aliases expand to more than {MAX_YAML_NODES:,} values; a recipe needs "
                              "far fewer (write the values out)")
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of field: value, not a {type(data).__name__}")
    return data


def _check_value(action, key: str, value: Any, where: str) -> None:
    """Refuse a YAML value the parser would refuse on the command line: through its own type and choices."""
    for item in value if isinstance(value, list) and action.nargs in ("+", "*") else [value]:
        if item is None or isinstance(item, dict):
            continue
        try:
            converted = action.type(str(item)) if action.type is not None else item
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            kind = getattr(action.type, "__name__", "value").replace("string_to_", "")
            raise ConfigError(f"{where}: {key}: {item!r} is not a valid {kind}") from None
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(f"{where}: {key}: {item!r} is not one of {', '.join(map(str, action.choices))}")


class StageParser(TrlParser):
    """:class:`trl.TrlParser` with the checks of this module; errors are :class:`ConfigError`."""

    def parse_stage(self, args: Sequence[str] | None = None) -> tuple[Any, ...]:
        """``--config file.yaml`` (at most once) sets the defaults, the flags override them."""
        args = list(sys.argv[1:] if args is None else args)
        configs = [k for k, a in enumerate(args) if a == "--config" or a.startswith("--config=")]
        if len(configs) > 1:
            raise ConfigError("--config is given twice; one recipe file per stage (put the values in one file, or "
                              "override single fields with flags)")
        if configs:
            k = configs[0]
            path = args[k][len("--config="):] if args[k] != "--config" else (args[k + 1] if k + 1 < len(args) else "")
            if not path:
                raise ConfigError("--config needs a file name")
            del args[k: k + (2 if args[k] == "--config" else 1)]
            self.apply_config(load_yaml(path), path)
        return self.parse_args_into_dataclasses(args=args, look_for_args_file=False)

    def apply_config(self, config: dict[str, Any], where: str) -> None:
        """Use ``config`` (a recipe's mapping) as the defaults; TRL's ``env:`` key sets environment variables."""
        config = dict(config)
        env = config.pop("env", {})
        if not isinstance(env, dict):
            raise ConfigError(f"{where}: env must be a mapping of variable: value")
        actions = {action.dest: action for action in self._actions}
        unknown = sorted(str(key) for key in config if key not in actions or key == "help")
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (not a field of "
                              f"{', '.join(t.__name__ for t in self.dataclass_types)})")
        for key, value in config.items():
            _check_value(actions[key], key, value, where)
        for key, value in env.items():
            os.environ[str(key)] = str(value)
        self.set_defaults_with_config(**config)


def check_values(parsed: Sequence[Any]) -> None:
    """Refuse values no stage can train with, before any stage runs: the ``TrainingArguments`` numbers transformers
    accepts unchecked (``SFTConfig``'s too: :func:`hanorec_trl.config.check_training_arguments`), a learning rate
    above 1 or a DPO ``beta`` above 100 (no fine-tuning uses them; they diverge after the earlier stages ran) and a
    LoRA dropout outside [0, 1) (1 zeroes every adapter's output, so nothing trains)."""
    from transformers import TrainingArguments

    from ..config import HaNoDPOConfig, check_training_arguments

    for args in parsed:
        if isinstance(args, TrainingArguments):
            if not isinstance(args, HaNoDPOConfig):  # which checks them in its __post_init__
                check_training_arguments(args)
            if args.learning_rate > 1:
                raise ValueError(f"learning_rate must be at most 1 for fine-tuning, got {args.learning_rate!r}")
            if getattr(args, "beta", 0) > 100:
                raise ValueError(f"beta must be at most 100 (DPO uses 0.01-1), got {args.beta!r}")
        dropout = getattr(args, "lora_dropout", 0.0)
        if not 0 <= dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1) (1 zeroes every adapter's output), got {dropout!r}")


def parse_stage_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None, *,
                     config: dict[str, Any] | None = None, where: str = "configuration") -> tuple[Any, ...]:
    """Parse a stage's dataclasses from ``args`` (``--config`` + flags), or from a mapping ``config`` (the runner's
    recipe files) plus ``args``. Errors from the dataclasses' own checks (``__post_init__``) come through as
    :class:`ConfigError` naming ``where``."""
    parser = StageParser(tuple(dataclass_types))
    try:
        if config is not None:
            parser.apply_config(config, where)
        parsed = parser.parse_stage(args if args is not None or config is None else [])
        check_values(parsed)
        return parsed
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


__all__ = ["ConfigError", "StageParser", "check_values", "load_yaml", "parse_stage_args"]
