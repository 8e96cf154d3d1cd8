"""Issue 14 item 3: bring your own dataset (``load_interactions`` and the data stage's ``dataset: custom``)."""

import json

import pytest
from datasets import Dataset
from pipeline_utils import record, run, write_recipe

from hanorec_trl.data import DataFormatError, RecData, load_interactions
from hanorec_trl.pipeline.parsing import ConfigError


def _world(num_users=60, num_items=15):
    """Interactions of a shop: (customer, sku, ISO time), every customer buying 7 items; item names."""
    rows = []
    for u in range(num_users):
        for k in range(7):
            sku = f"SKU-{(u * 3 + k * 2) % num_items:03d}"
            rows.append({"customer": f"c{u}", "sku": sku, "when": f"2024-03-{k + 1:02d}T10:00:00"})
    items = [{"sku": f"SKU-{i:03d}", "product_name": f"Product number {i}"} for i in range(num_items)]
    return rows, items


def _write_csv(path, rows, sep=";"):
    header = list(rows[0])
    path.write_text("\n".join([sep.join(header)] + [sep.join(str(r[h]) for h in header) for r in rows]) + "\n")
    return path


COLUMNS = dict(user_col="customer", item_col="sku", time_col="when", title_col="product_name")


def test_csv_files_with_other_column_names_load_like_a_built_in_dataset(tmp_path):
    rows, items = _world()
    (tmp_path / "shop").mkdir()
    inter = _write_csv(tmp_path / "shop" / "orders.csv", rows)
    catalogue = _write_csv(tmp_path / "shop" / "catalogue.csv", items)
    data = load_interactions(inter, catalogue, sep=";", **COLUMNS)
    assert isinstance(data, RecData) and data.name == "shop"
    assert data.num_items == 15 and data.num_interactions == 60 * 7
    assert data.title("SKU-003") == "Product number 3"
    assert data.user_sequences()["c0"][:3] == ["SKU-000", "SKU-002", "SKU-004"]
    # the same tables as pandas DataFrames, a datasets.Dataset, Parquet and JSON Lines: the same RecData content
    import pandas as pd

    frames = load_interactions(pd.DataFrame(rows), pd.DataFrame(items), **COLUMNS)
    hub = load_interactions(Dataset.from_list(rows), Dataset.from_list(items), **COLUMNS)
    pd.DataFrame(rows).to_parquet(tmp_path / "orders.parquet")
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    files = load_interactions(tmp_path / "orders.parquet", tmp_path / "items.jsonl", **COLUMNS)
    for other in (frames, hub, files):
        assert other.fingerprint() == data.fingerprint()


def test_bad_rows_name_the_file_and_the_line(tmp_path):
    rows, items = _world()
    catalogue = _write_csv(tmp_path / "catalogue.csv", items)
    text = _write_csv(tmp_path / "orders.csv", rows).read_text().splitlines()
    text[4] = "c1;SKU-001"  # line 5: a field missing
    (tmp_path / "orders.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError, match=r"orders\.csv:5: expected 3 fields"):
        load_interactions(tmp_path / "orders.csv", catalogue, sep=";", **COLUMNS)
    text[4] = "c1;SKU-001;yesterday"  # line 5: a time that is neither a number nor a date
    (tmp_path / "orders.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError, match=r"orders\.csv:5: when must be a number or an ISO date"):
        load_interactions(tmp_path / "orders.csv", catalogue, sep=";", **COLUMNS)
    (tmp_path / "items.jsonl").write_text('{"sku": "SKU-000", "product_name": "a"}\n{"sku": \n')
    with pytest.raises(DataFormatError, match=r"items\.jsonl:2: not a JSON object"):
        load_interactions(Dataset.from_list(rows), tmp_path / "items.jsonl", **COLUMNS)
    bad = [dict(r) for r in rows]
    bad[3]["customer"] = ""
    with pytest.raises(DataFormatError, match="interactions Dataset row 3: empty user or item id"):
        load_interactions(Dataset.from_list(bad), Dataset.from_list(items), **COLUMNS)
    with pytest.raises(DataFormatError, match="items Dataset: no column items_item_col='item_id'"):
        load_interactions(Dataset.from_list(rows), Dataset.from_list(items), user_col="customer")


def test_pipeline_runs_on_csv_files_with_other_column_names(tmp_path):
    """A recipe folder whose data.yaml names the tables (docs/data.md), through every stage with the tiny text
    model (titles only)."""
    rows, items = _world()
    (tmp_path / "shop").mkdir()
    _write_csv(tmp_path / "shop" / "orders.csv", rows)
    _write_csv(tmp_path / "shop" / "catalogue.csv", items)
    tables = {"interactions": "orders.csv", "items": "catalogue.csv", "sep": ";", **COLUMNS}
    recipe = write_recipe(tmp_path / "recipe", {
        "data": {"dataset": "custom", "data_dir": str(tmp_path / "shop"), "tables": tables, "num_candidates": 5},
        "sft": {"model_name_or_path": "tiny-qwen2", "max_steps": 1}, "dpo": {"max_steps": 1}})
    out = tmp_path / "run"
    assert run("--recipe", recipe, "--run_dir", out) == 0
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["dataset"] == "shop" and {"sft", "hano"} <= set(results["models"])
    assert (out / "hardness" / "pairs").is_dir()
    assert record(out / "data")["config"]["DataArguments.images"] is False  # a text LLM: titles only
    assert record(out / "data")["inputs"]["data"] == load_interactions(
        tmp_path / "shop" / "orders.csv", tmp_path / "shop" / "catalogue.csv", sep=";", **COLUMNS).fingerprint()


def test_pipeline_runs_on_a_datasets_dataset(tmp_path):
    """Tables in memory go to the data stage's main (no files to name); its output is what the later stages read."""
    from hanorec_trl.data import ProtocolConfig
    from hanorec_trl.scripts import data as data_stage

    rows, items = _world()
    data = load_interactions(Dataset.from_list(rows), Dataset.from_list(items), name="shop-hub", **COLUMNS)
    folder = tmp_path / "run" / "data"
    done = data_stage.main(data_stage.DataArguments(output_dir=str(folder), dataset="custom", images=False),
                           ProtocolConfig(num_candidates=5), data=data)
    assert done["inputs"]["data"] == data.fingerprint() and record(folder) == done
    prepared = data_stage.load_prepared(folder)
    assert prepared.data.name == "shop-hub" and prepared.data.fingerprint() == data.fingerprint()
    sft = prepared.dataset("sft")
    assert len(sft) == len(prepared.train_examples) * 2 and "images" not in sft.column_names  # ranking + AUC
    assert "Product number" in json.dumps(sft[0]["prompt"])  # the item table's titles
    with pytest.raises(ConfigError, match="dataset custom needs tables"):  # files, unless the data is given
        data_stage.main(data_stage.DataArguments(output_dir=str(tmp_path / "other"), dataset="custom",
                                                 images=False), ProtocolConfig(num_candidates=5))


def test_load_dataset_by_name_reads_relative_tables_samples_users_and_names_bad_input(tmp_path):
    from hanorec_trl.data import load_dataset

    rows, items = _world()
    (tmp_path / "shop").mkdir()
    _write_csv(tmp_path / "shop" / "orders.csv", rows)
    _write_csv(tmp_path / "shop" / "catalogue.csv", items)
    tables = {"interactions": "orders.csv", "items": "catalogue.csv", "sep": ";", **COLUMNS}
    data = load_dataset("custom", tmp_path / "shop", images=False, tables=tables)  # paths relative to the folder
    direct = load_interactions(tmp_path / "shop" / "orders.csv", tmp_path / "shop" / "catalogue.csv", sep=";",
                               **COLUMNS)
    assert data.fingerprint() == direct.fingerprint()
    sampled = load_dataset("custom", tmp_path / "shop", images=False, tables=tables, max_users=10, seed=1)
    assert sampled.num_users == 10 and set(sampled.user_sequences()) < set(data.user_sequences())
    with pytest.raises(ValueError, match="unknown dataset 'movielens-20m'"):
        load_dataset("movielens-20m", tmp_path)
    with pytest.raises(ValueError, match="needs tables"):
        load_dataset("custom", tmp_path / "shop")
    with pytest.raises(TypeError, match="tables: .*colour_col"):
        load_dataset("custom", tmp_path / "shop", images=False, tables={**tables, "colour_col": "x"})
