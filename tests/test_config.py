"""Config loading: every shipped config validates; bad keys and types name the key and the file."""

from pathlib import Path

import pytest

from loratune.config import apply_overrides, config_from_dict, load_config, save_config
from loratune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# Run configs; pipeline files (a list of stages) are loaded by tests/test_pipeline.py.
SHIPPED = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("pipeline-"))


def test_there_are_shipped_configs():
    names = {p.name for p in SHIPPED}
    assert {
        "text2sql-smollm2.yaml", "finance-qa-smollm2.yaml", "summarize-smollm2.yaml",
        "finance-qa-flan-t5-large.yaml", "text2sql-flan-t5-large.yaml",
        "llama2-sql-flan-t5-large.yaml", "cnn-dailymail-flan-t5-large.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path, tmp_path):
    import dataclasses

    import yaml

    cfg = load_config(path)
    assert cfg.name == path.stem
    # every value the file sets arrives in the config as written (nothing dropped or renamed)
    resolved = dataclasses.asdict(cfg)

    def check(written, got, key):
        if isinstance(written, dict):
            for k, v in written.items():
                check(v, got[k], f"{key}.{k}")
        else:
            assert got == written, key

    check(yaml.safe_load(path.read_text()), resolved, path.name)
    # and the resolved config saved beside an adapter loads back to the same config
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    # local data files named by a shipped config exist in the repo
    for value in (cfg.data.train, cfg.data.eval):
        if value and value.startswith("data/"):
            assert (ROOT / value).is_file(), value


@pytest.mark.parametrize("name", ["finance-qa", "text2sql", "llama2-sql", "cnn-dailymail"])
def test_original_recipes_keep_the_original_hyperparameters(name):
    cfg = load_config(ROOT / "configs" / f"{name}-flan-t5-large.yaml")
    assert cfg.model == "google/flan-t5-large"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert cfg.lora.target_modules == ["q", "v", "o"] and cfg.lora.bias == "all"
    assert cfg.train.lr == 3e-3 and cfg.train.scheduler == "cosine" and cfg.train.grad_accum == 8
    assert cfg.train.precision == "bf16" and cfg.train.weights_dtype == "bf16"
    assert cfg.train.batch_size == "auto"


def test_stage_two_continues_from_stage_one():
    cfg = load_config(ROOT / "configs" / "llama2-sql-flan-t5-large.yaml")
    assert cfg.task == "llama2-sql"
    assert cfg.lora.init_adapter == "runs/text2sql-flan-t5-large"


def test_defaults():
    cfg = config_from_dict({"task": "sql-create-context", "data": {"train": "x.jsonl"}})
    assert cfg.data.max_source_tokens == 512
    assert cfg.output_dir == "runs" and cfg.run_dir == Path("runs/run")
    assert cfg.train.precision == "auto"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nlora:\n  rank: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "lora.rank" in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  r: sixteen\n")
    with pytest.raises(ConfigError, match=r"lora\.r: expected an integer, got 'sixteen'"):
        load_config(path)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="train.grad_accum"):
        config_from_dict({"train": {"grad_accum": True}})


def test_range_errors_name_the_key():
    with pytest.raises(ConfigError, match="lora.dropout"):
        config_from_dict({"lora": {"dropout": 1.5}})
    with pytest.raises(ConfigError, match="task: unknown task 'nope'"):
        config_from_dict({"task": "nope"})
    with pytest.raises(ConfigError, match="train.batch_size"):
        config_from_dict({"train": {"batch_size": "big"}})
    for bad in (0, "some"):
        with pytest.raises(ConfigError, match="train.pad_to_multiple_of"):
            config_from_dict({"train": {"pad_to_multiple_of": bad}})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ntask: sql-create-context\ntrain:\n  lr: 3e-3\n")
    cfg = load_config(path, ["train.max_steps=50", "name=try1", "lora.target_modules=q,v", "train.lr=1e-4",
                             "data.eval=null", "train.batch_size=auto"])
    assert cfg.train.max_steps == 50 and cfg.name == "try1"
    assert cfg.lora.target_modules == ["q", "v"]
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.batch_size == "auto"


def test_override_errors_mention_set():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"with --set overrides.*train.max_stepz"):
        load_config(ROOT / "configs" / "text2sql-smollm2.yaml", ["train.max_stepz=3"])


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nlora: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope/missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "text2sql-smollm2.yaml", ["train.max_steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
