#!/usr/bin/env bash
# The plausible bugs of issues 27 and 28, each applied alone to a scratch clone of HEAD: the tests named must fail.
# Usage (from the project root, after `bash scripts/install.sh dev`): bash scripts/mutation_check.sh  (~6 min)
set -u
SRC=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel); W=$(mktemp -d)/clone
run_mutation() {  # name, python edit
  rm -rf $W && mkdir -p "$(dirname $W)" && git clone -q $SRC $W && ln -s $SRC/.venv $W/.venv
  (cd $W && .venv/bin/python -c "$2") || { echo "$1: EDIT FAILED"; return; }
  (cd $W && git diff --stat | tail -1)
  out=$(cd $W && PYTHONPATH=$W timeout 1500 .venv/bin/python -m pytest -q -p no:cacheprovider -x $3 2>&1 | tail -3)
  echo "$1: $(echo "$out" | grep -E 'passed|failed' | tail -1)"
  echo "$out" | grep -E "^FAILED" | head -3
}
run_mutation "foreign top-level folder let through" "
from pathlib import Path
p=Path('hanorec_trl/pipeline/run_dir.py'); s=p.read_text()
old='            if stage not in listed or entry.is_symlink() or not entry.is_dir():'
assert old in s
p.write_text(s.replace(old, '            if stage not in listed and entry.is_dir() and not entry.is_symlink():\n                continue\n'+old))
" "tests/test_pipeline_reliability.py -k overwrite"
run_mutation "paths compared by folder name" "
from pathlib import Path
p=Path('hanorec_trl/pipeline/stage.py'); s=p.read_text()
import re
i=s.index('def _path('); j=s.index('def stage_key(')
body=s[i:j]
new=body.replace('def _path(value: Any, base: Path | None) -> Any:', 'def _path(value: Any, base: Path | None) -> Any:\n    if isinstance(value, str) and Path(value).expanduser().exists():\n        return Path(value).name\n',1)
s=s[:i]+new+s[j:]
s=s.replace('    if (path / RECORD).is_file():\n        return read_json(path / RECORD, \"stage record\")[\"fingerprint\"]', '    return f\"name:{path.name}\"\n    if (path / RECORD).is_file():\n        return read_json(path / RECORD, \"stage record\")[\"fingerprint\"]',1)
p.write_text(s)
" "tests/test_pipeline_stages.py"
run_mutation "resume ignores a field the record lacks" "
from pathlib import Path
p=Path('hanorec_trl/pipeline/stage.py'); s=p.read_text()
old='        if record.get(\"key\") != self.key:\n            raise self.mismatch(record, self.folder)'
assert old in s
new='''        recorded = record.get(\"config\", {})
        if any(recorded[k] != v for k, v in self.config.items() if k in recorded) or record.get(\"inputs\") != self.inputs:
            raise self.mismatch(record, self.folder)'''
p.write_text(s.replace(old,new))
" "tests/test_pipeline_reliability.py tests/test_pipeline_stages.py -k lacks"
run_mutation "items_item_col ignored" "
from pathlib import Path
p=Path('hanorec_trl/data/custom.py'); s=p.read_text()
old='    item_key = items_item_col or item_col\n'; assert old in s
p.write_text(s.replace(old, '    item_key = item_col\n'))
" "tests/test_custom_dataset.py tests/test_byo_data_reliability.py tests/test_data_loaders.py"
run_mutation "time_col given but times dropped" "
from pathlib import Path
p=Path('hanorec_trl/data/custom.py'); s=p.read_text()
old='        stamps, sources[\"time_unit\"] = parse_times(raw_times, time_col, time_unit, time_zone)\n'; assert old in s
p.write_text(s.replace(old, old+'        stamps = None\n'))
" "tests/test_custom_dataset.py tests/test_byo_data_reliability.py tests/test_data_loaders.py"
run_mutation "duplicate item id accepted" "
from pathlib import Path
p=Path('hanorec_trl/data/custom.py'); s=p.read_text()
old='        _check_unique(item_id, first_seen, where)\n'; assert old in s
p.write_text(s.replace(old, ''))
" "tests/test_custom_dataset.py tests/test_byo_data_reliability.py tests/test_data_loaders.py"
