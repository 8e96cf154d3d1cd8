"""Print a flat recipe of earlier versions in the nested form (sections model / sft / dpo / run / data / ...).

    python scripts/translate_recipe.py old.yaml            # prints the new recipe
    python scripts/translate_recipe.py old.yaml --write    # rewrites the file in place (its leading comments kept)

The translation is hanorec_trl.pipeline.translate_flat (table in docs/pipeline.md); the pipeline applies the same
function to flat recipes and flat flags, so both forms give the same run.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from hanorec_trl.pipeline.arguments import SECTIONS
from hanorec_trl.pipeline.flat_names import is_flat_recipe, translate_flat

# old flags in the recipes' comment lines -> the new ones
_FLAGS = {"--data_dir": "--data.data_dir", "--output_dir": "--run.run_dir", "--max_users": "--data.max_users",
          "--model": "--model.model_name_or_path", "--resume": "--run.resume"}


def nested_yaml(text: str) -> str:
    recipe = yaml.safe_load(text) or {}
    if not is_flat_recipe(recipe):
        raise SystemExit("already in the nested form")
    nested = translate_flat(recipe)
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(re.sub(r"--[a-z_]+\b", lambda m: _FLAGS.get(m.group(0), m.group(0)), line))
    body = []
    for section in SECTIONS:
        if nested.get(section):
            body.append(yaml.safe_dump({section: nested[section]}, sort_keys=False, default_flow_style=False).rstrip())
    return "\n".join(header + body) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--write", action="store_true", help="rewrite the file in place")
    args = parser.parse_args()
    path = Path(args.recipe)
    out = nested_yaml(path.read_text(encoding="utf-8"))
    if args.write:
        path.write_text(out, encoding="utf-8")
    else:
        print(out, end="")


if __name__ == "__main__":
    main()
