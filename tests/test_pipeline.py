"""Pipelines: the file is checked before anything trains, stages chain their adapters, and the
forgetting matrix (json, png, report section, per-cell predictions) comes out right on tiny models."""

import json
from pathlib import Path

import pytest
import yaml

from loratune.cli import main
from loratune.config import load_config
from loratune.data import load_splits, read_rows
from loratune.errors import AdapterError, ConfigError, DataError, RunDirError
from loratune.pipeline import check_pipeline, load_pipeline, run_pipeline
from loratune.tasks import get_task
from loratune.tasks.sql import parse_llama2_sql, sql_prompt

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
PAIRS = [("red", "apple"), ("yellow", "banana"), ("green", "lime"), ("purple", "grape")]
QUIET = dict(log=lambda *_: None)


def is_pipeline(path: Path) -> bool:
    return "stages" in (yaml.safe_load(path.read_text()) or {})


# ---------------------------------------------------------------- shipped files


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Run configs and pipeline files alike; every local data file they name exists."""
    configs = [s.cfg for s in load_pipeline(path).stages] if is_pipeline(path) else [load_config(path)]
    for cfg in configs:
        for value in (cfg.data.train, cfg.data.eval):
            if value and value.startswith("data/"):
                assert (ROOT / value).is_file(), value


def test_shipped_pipeline_is_the_original_two_stage_recipe(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    pipeline = load_pipeline(ROOT / "configs" / "pipeline-text2sql.yaml", [f"output_dir={tmp_path}"])
    first, second = pipeline.stages
    assert (first.cfg.task, second.cfg.task) == ("sql-create-context", "llama2-sql")
    assert first.cfg.model == second.cfg.model == "smollm2-135m-instruct"
    assert first.cfg.lora.init_adapter is None
    assert second.chained and second.cfg.lora.init_adapter == str(tmp_path / first.name)
    # Both stages keep the demo's settings (text2sql-smollm2.yaml).
    demo = load_config(ROOT / "configs" / "text2sql-smollm2.yaml")
    assert first.cfg.train == demo.train and second.cfg.train == demo.train and second.cfg.lora.r == demo.lora.r
    assert pipeline.folder == tmp_path / "pipeline-text2sql"
    assert check_pipeline(pipeline) == ["train", "train"]


def test_llama2_sql_sample_parses_and_is_unused_by_stage_one(monkeypatch):
    monkeypatch.chdir(ROOT)
    task = get_task("llama2-sql")
    source = read_rows("data/sql-create-context/train.jsonl")
    stage_one = load_pipeline(ROOT / "configs" / "pipeline-text2sql.yaml").stages[0].cfg
    trained_on, _ = load_splits(stage_one.data, get_task(stage_one.task), stage_one.train.seed)
    used = {row["_line"] for row in trained_on}
    assert len(used) == 256
    lines = {}
    for split, n in (("train", 300), ("eval", 60)):
        path = ROOT / "data" / "llama2-sql" / f"{split}.jsonl"
        rows = read_rows(str(path))
        assert len(rows) == n
        for row in rows:
            original = source[row["source_line"] - 1]
            parsed = parse_llama2_sql(row["input"])
            assert parsed == {"question": original["question"], "context": original["context"]}
            assert row["input"].rstrip().endswith("### Response:")
            assert task.prompt(row) == sql_prompt(original)  # the same prompt stage 1 trains on
            assert task.target(row) == original["answer"]
            assert task.build_schema(row) == original["context"]
        lines[split] = {row["source_line"] for row in rows}
    assert not lines["train"] & lines["eval"] and not (lines["train"] | lines["eval"]) & used
    assert sum(p.stat().st_size for p in (ROOT / "data" / "llama2-sql").iterdir()) < 1_000_000


# ---------------------------------------------------------------- validation


def write_pipeline(tmp_path, stages, **top):
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"name": "pipe", "output_dir": str(tmp_path / "runs"), **top, "stages": stages}))
    return path


def fruit_file(tmp_path, name="fruit.jsonl"):
    path = tmp_path / name
    rows = [{"prompt": f"Fruit of colour {c}:", "completion": f" {f}"} for c, f in PAIRS] * 6
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage(name, data, model="tiny", **extra):
    return {"name": name, "model": model, "task": "prompt-completion", "data": {"train": str(data)}, **extra}


@pytest.mark.parametrize("stages, top, error, message", [
    ([], {}, ConfigError, r"pipe.yaml: stages: expected a list"),
    (None, {"stage": []}, ConfigError, r"pipe.yaml: unknown key 'stage'"),
    (["missing.yaml"], {}, ConfigError, r"stages\[0\]: run config 'missing.yaml' not found"),
    ([{"config": "missing.yaml", "name": "a"}], {}, ConfigError, r"stages\[0\]: run config 'missing.yaml'"),
    ([7], {}, ConfigError, r"stages\[0\]: expected a run config path or a mapping"),
    ("bad-key", {}, ConfigError, r"stages\[1\].*unknown key 'lora.rank'"),
    ("bad-value", {}, ConfigError, r"stages\[1\].*lora.dropout: must be in \[0, 1\)"),
    ("duplicate", {}, ConfigError, r"stages\[1\]: name: 'a' is also the name of .*stages\[0\]"),
    ("base", {}, ConfigError, r"stages\[0\]: name: 'base' is the base model's label"),
    ("models", {}, ConfigError, r"stages\[1\]: model: 'other' differs from stages\[0\]'s 'tiny'"),
])
def test_pipeline_file_errors_name_the_stage_and_key(tmp_path, stages, top, error, message):
    data = fruit_file(tmp_path)
    cases = {
        "bad-key": [stage("a", data), stage("b", data, lora={"rank": 4})],
        "bad-value": [stage("a", data), stage("b", data, lora={"dropout": 2.0})],
        "duplicate": [stage("a", data), stage("a", data)],
        "base": [stage("base", data)],
        "models": [stage("a", data), stage("b", data, model="other")],
    }
    path = tmp_path / "pipe.yaml"
    values = {"name": "pipe", **top}
    if stages is not None:
        values["stages"] = cases.get(stages, stages) if isinstance(stages, str) else stages
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(error, match=message):
        load_pipeline(path)


def test_data_and_adapter_problems_are_found_before_anything_trains(tmp_path):
    data = fruit_file(tmp_path)
    path = write_pipeline(tmp_path, [stage("a", data), stage("b", tmp_path / "nope.jsonl")])
    with pytest.raises(DataError, match=r"stages\[1\] \(b\): .*nope.jsonl: data file not found"):
        run_pipeline(path, **QUIET)
    assert not (tmp_path / "runs").exists()  # stage a did not train

    path = write_pipeline(tmp_path, [stage("a", data, lora={"init_adapter": str(tmp_path / "gone")})])
    with pytest.raises(AdapterError, match=r"stages\[0\]: lora.init_adapter: .*gone: no such run"):
        run_pipeline(path, **QUIET)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x"}\n')
    path = write_pipeline(tmp_path, [stage("a", data), stage("b", broken)])
    with pytest.raises(DataError, match=r"stages\[1\] \(b\): .*broken.jsonl:1: missing column 'completion'"):
        run_pipeline(path, **QUIET)


def test_a_run_directory_in_the_way_is_an_error_unless_overwrite(tmp_path):
    data = fruit_file(tmp_path)
    path = write_pipeline(tmp_path, [stage("a", data)])
    (tmp_path / "runs" / "a" / "adapter").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "runs" / "a" / "config.yaml").write_text("name: something-else\n")
    with pytest.raises(RunDirError, match=r"stages\[0\]: .*runs/a already holds a run .*--overwrite"):
        check_pipeline(load_pipeline(path))
    assert check_pipeline(load_pipeline(path), overwrite=True) == ["train"]


def test_what_a_rerun_does_with_each_run_directory(tmp_path):
    """Kept when trained from the same config, resumed from a checkpoint, replaced after a failed start."""
    from loratune.config import save_config

    data = fruit_file(tmp_path)
    path = write_pipeline(tmp_path, [stage("a", data), stage("b", data), stage("c", data)])
    a, b, c = (s.cfg for s in load_pipeline(path).stages)
    save_config(a, a.run_dir / "config.yaml")
    for name in ("adapter/adapter_config.json", "run_summary.json"):
        (a.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (a.run_dir / name).write_text("{}")
    save_config(b, b.run_dir / "config.yaml")
    (b.run_dir / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (b.run_dir / "checkpoints" / "checkpoint-5" / "adapter_config.json").write_text("{}")
    (c.run_dir).mkdir(parents=True)
    (c.run_dir / "config.yaml").write_text("name: c\n")  # a failed start: no adapter, no checkpoint
    assert check_pipeline(load_pipeline(path)) == ["done", "resume", "train"]
    # Another config for stage a: it would retrain, so b's checkpoint is stale and in the way.
    with pytest.raises(RunDirError, match=r"stages\[0\]"):
        check_pipeline(load_pipeline(path, ["train.lr=0.5"]))
    (a.run_dir / "config.yaml").write_text("name: a\n")
    with pytest.raises(RunDirError, match=r"stages\[0\]: .*runs/a already holds a run"):
        check_pipeline(load_pipeline(path))


def test_cli_error_is_one_line_with_exit_code(tmp_path, capsys):
    path = write_pipeline(tmp_path, [stage("a", fruit_file(tmp_path))])
    assert main(["pipeline", str(path), "--set", "train.max_stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stages[0]" in err and "train.max_stepz" in err and "with --set" in err


def test_stages_chain_unless_they_name_their_own_start(tmp_path):
    data = fruit_file(tmp_path)
    own = tmp_path / "elsewhere"
    path = write_pipeline(tmp_path, [
        stage("a", data), stage("b", data), stage("c", data, lora={"init_adapter": None}),
        stage("d", data, lora={"init_adapter": str(own)}), stage("e", data),
    ])
    runs = tmp_path / "runs"
    starts = [(s.cfg.lora.init_adapter, s.chained) for s in load_pipeline(path).stages]
    assert starts == [(None, False), (str(runs / "a"), True), (None, False), (str(own), False), (str(runs / "d"), True)]
    # --set applies to every stage, and output_dir moves the pipeline folder with the stages.
    moved = load_pipeline(path, ["train.max_steps=3", f"output_dir={tmp_path / 'elsewhere-runs'}"])
    assert all(s.cfg.train.max_steps == 3 for s in moved.stages)
    assert moved.folder == tmp_path / "elsewhere-runs" / "pipe"
    assert moved.stages[1].cfg.lora.init_adapter == str(tmp_path / "elsewhere-runs" / "a")


def test_a_stage_file_with_overrides_is_merged_key_by_key(tmp_path):
    data = fruit_file(tmp_path)
    base = tmp_path / "base.yaml"
    values = {**stage("a", data), "data": {"train": str(data), "max_source_tokens": 64}, "train": {"lr": 0.01}}
    base.write_text(yaml.safe_dump(values))
    path = write_pipeline(tmp_path, ["base.yaml", {"config": "base.yaml", "name": "b", "data": {"max_target_tokens": 8}}])
    first, second = load_pipeline(path).stages
    assert first.name == "a" and second.name == "b"
    assert (second.cfg.data.train, second.cfg.data.max_source_tokens, second.cfg.data.max_target_tokens) == (
        str(data), 64, 8)
    assert second.cfg.train.lr == 0.01


# ---------------------------------------------------------------- end to end on a tiny model


def sql_file(tmp_path):
    rows = read_rows(str(ROOT / "data" / "sql-create-context" / "train.jsonl"))[:12]
    path = tmp_path / "sql.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("question", "context", "answer")}) + "\n" for r in rows))
    return path


def tiny_pipeline(tmp_path, model_dir):
    common = {"model": str(model_dir), "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
              "eval": {"limit": 4, "batch_size": 2, "generation": {"max_new_tokens": 8}, "sql": {"num_dbs": 2}}}
    train = {"lr": 1e-2, "batch_size": 6, "logging_steps": 5, "warmup_ratio": 0.0, "seed": 3}
    sql = sql_file(tmp_path)
    fruit = fruit_file(tmp_path)
    return write_pipeline(tmp_path, [
        {"name": "sql", "task": "sql-create-context", **common, "train": {**train, "max_steps": 4},
         "data": {"train": str(sql), "eval": str(sql), "max_eval_rows": 4, "use_chat_template": False}},
        {"name": "fruit", "task": "prompt-completion", **common, "train": {**train, "max_steps": 30},
         "data": {"train": str(fruit), "eval": str(fruit), "max_eval_rows": 4, "use_chat_template": False}},
    ])


def test_tiny_pipeline_end_to_end(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    import loratune.evaluation.forgetting
    import loratune.inference.generate

    path = tiny_pipeline(tmp_path, tiny_llama_dir)
    runs = tmp_path / "runs"
    assert main(["pipeline", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[stage 2/2] fruit: training, from " + str(runs / "sql") in out

    # Stage chaining: each adapter's loratune.json records where it started.
    meta = [json.loads((runs / n / "adapter" / "loratune.json").read_text()) for n in ("sql", "fruit")]
    assert meta[0]["init_adapter"] is None and meta[1]["init_adapter"] == str(runs / "sql")

    folder = runs / "pipe"
    result = json.loads((folder / "forgetting.json").read_text())
    assert result["adapters"] == ["base", "sql", "fruit"] and result["eval_sets"] == ["sql", "fruit"]
    assert result["metric"] == {"sql": "execution_accuracy", "fruit": "rougeL"}
    assert result["rows"] == {"sql": 4, "fruit": 4}
    scores = result["scores"]
    assert len(scores) == 3 and all(len(row) == 2 for row in scores)
    assert all(0.0 <= v <= 1.0 for row in scores for v in row)
    assert scores[2][1] > scores[0][1]  # the fruit stage learnt its completions; the base did not
    assert (folder / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = (folder / "forgetting.md").read_text()
    assert "| base | " in section and "![forgetting matrix](forgetting.png)" in section
    assert "What stage 2 (fruit) cost stage 1 (sql)" in section
    for adapter in result["adapters"]:
        for eval_set in result["eval_sets"]:
            cell = [json.loads(x) for x in (folder / "cells" / f"{adapter}--{eval_set}.jsonl").read_text().splitlines()]
            assert sorted(r["i"] for r in cell) == [0, 1, 2, 3]
    assert [s["init_adapter"] for s in json.loads((folder / "pipeline.json").read_text())["stages"]] == [
        None, str(runs / "sql")]

    # A rerun keeps the trained stages and every finished cell: nothing is generated again.
    calls = []
    real = loratune.inference.generate.generate_texts
    monkeypatch.setattr(loratune.evaluation.forgetting, "generate_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_pipeline(path, **QUIET)
    assert calls == [] and again["scores"] == scores

    # A killed evaluation keeps the batches it finished; the next run generates only the rest.
    cell = folder / "cells" / "fruit--fruit.jsonl"
    cell.write_text("".join(cell.read_text().splitlines(keepends=True)[:2]) + '{"key": "torn')
    again = run_pipeline(path, **QUIET)
    assert len(calls) == 1 and again["scores"] == scores  # one batch of 2 rows


def test_changed_stage_config_needs_overwrite_then_retrains(tmp_path, tiny_llama_dir):
    path = tiny_pipeline(tmp_path, tiny_llama_dir)
    run_pipeline(path, ["train.max_steps=2"], limit=2, **QUIET)
    with pytest.raises(RunDirError, match=r"stages\[0\]: .*already holds a run"):
        run_pipeline(path, ["train.max_steps=3"], **QUIET)
    result = run_pipeline(path, ["train.max_steps=3"], overwrite=True, limit=2, **QUIET)
    assert result["rows"] == {"sql": 2, "fruit": 2}
    summary = json.loads((tmp_path / "runs" / "fruit" / "run_summary.json").read_text())
    assert summary["steps"] == 3
