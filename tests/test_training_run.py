"""Training end to end on tiny models: the loss falls, the run directory holds what it should."""

import json

import pytest
import torch
import yaml
from run_helpers import make_cfg

from loratune.errors import AdapterError, DataError, RunDirError
from loratune.training.run import train_run


def train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r]


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_t5_dir"])
def test_loss_falls_and_run_dir_is_complete(tmp_path, which, request):
    model_dir = request.getfixturevalue(which)
    cfg = make_cfg(tmp_path, model_dir, lr=3e-2 if which == "tiny_t5_dir" else 1e-2)
    result = train_run(cfg, log=lambda *_: None)
    run_dir = result.run_dir
    losses, eval_losses = train_losses(run_dir)
    assert losses[-1] < 0.6 * losses[0]
    assert result.summary["eval_loss_end"] < result.summary["eval_loss_start"]
    assert eval_losses[0] == pytest.approx(result.summary["eval_loss_start"])
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/loratune.json",
                 "config.yaml", "metrics.jsonl", "data_stats.json", "run_summary.json"):
        assert (run_dir / name).is_file(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 30 and saved["lora"]["r"] == 8
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["train_tokens"] > 0 and summary["steps"] == 30
    assert summary["model_type"] == ("seq2seq" if which == "tiny_t5_dir" else "causal")
    # a fixed batch size: no probes, and the Trainer started once
    assert summary["batch_fit"] is None and summary["oom_restarts"] == 0 and summary["batch_size"] == 6
    if which == "tiny_llama_dir":
        # r=8 on q, k, v, o (32->32, 32->16, 32->16, 32->32) and gate, up, down (32<->64), 2 layers:
        # r * (in + out) per matrix, by hand.
        per_layer = 8 * ((32 + 32) + (32 + 16) * 2 + (32 + 32) + (32 + 64) * 3)
        assert per_layer * 2 == 8192
        assert summary["trainable_line"].startswith("Trainable parameters 8,192 || All parameters ")


def adapter_logits(model_dir, adapter_dir, kind_inputs):
    from peft import PeftModel

    from loratune.models.load import load_model

    loaded = load_model(str(model_dir), device="cpu")
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**kind_inputs).logits


def test_saved_adapter_reloads_identically_and_continuing_changes_it(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="first", max_steps=10)
    first = train_run(cfg, log=lambda *_: None).run_dir
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]])}
    a = adapter_logits(tiny_llama_dir, first / "adapter", inputs)
    b = adapter_logits(tiny_llama_dir, first / "adapter", inputs)
    assert torch.equal(a, b)

    # Continue from the first adapter: it starts from those weights (no fresh init) ...
    from loratune.models.load import load_model
    from loratune.models.lora import apply_lora

    cont_cfg = make_cfg(tmp_path, tiny_llama_dir, name="second", max_steps=10)
    cont_cfg.lora.init_adapter = str(first)
    start_model = apply_lora(load_model(str(tiny_llama_dir), device="cpu").model, "causal", cont_cfg.lora)
    with torch.no_grad():
        assert torch.equal(start_model(**inputs).logits, a)
    # ... and training changes them, and the lineage is recorded.
    second = train_run(cont_cfg, log=lambda *_: None).run_dir
    w1 = load_file(first / "adapter" / "adapter_model.safetensors")
    w2 = load_file(second / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert json.loads((second / "run_summary.json").read_text())["init_adapter"] == str(first)
    assert json.loads((second / "adapter" / "loratune.json").read_text())["init_adapter"] == str(first)


def test_existing_run_is_not_clobbered_and_resume_works(tmp_path, tiny_llama_dir):
    cfg = make_cfg(tmp_path, tiny_llama_dir, name="keep", max_steps=6, eval_steps=3)
    run_dir = train_run(cfg, log=lambda *_: None).run_dir
    before = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds a trained adapter.*--overwrite"):
        train_run(cfg, log=lambda *_: None)
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == before
    cfg.train.max_steps = 9
    result = train_run(cfg, resume=True, log=lambda *_: None)
    assert result.summary["steps"] == 9
    assert result.summary["eval_loss_start"] is not None  # kept from the first session
    steps = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps))  # steps after the checkpoint were not logged twice


def test_bad_data_fails_before_loading_or_writing_and_the_retry_runs(tmp_path, tiny_llama_dir, monkeypatch):
    import loratune.models.load

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="x", max_steps=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "no completion"}\n')
    cfg.data.train = str(bad)

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the data was checked")

    monkeypatch.setattr(loratune.models.load, "load_model", no_weights)
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing column 'completion'"):
        train_run(cfg, log=lambda *_: None)
    assert not cfg.run_dir.exists()  # nothing written
    monkeypatch.undo()
    # What a failed start after the checks leaves (config, log, no adapter, no checkpoint) does
    # not block the corrected retry under the same name.
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text("stale: true\n")
    (cfg.run_dir / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 9.9}\n')
    cfg.data.train = make_cfg(tmp_path, tiny_llama_dir).data.train
    result = train_run(cfg, log=lambda *_: None)
    assert result.summary["steps"] == 2
    assert "stale" not in (cfg.run_dir / "config.yaml").read_text()
    assert result.summary["eval_loss_start"] != 9.9


def test_missing_init_adapter_fails_before_anything(tmp_path, tiny_llama_dir, monkeypatch):
    import loratune.models.load

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="y")
    cfg.lora.init_adapter = str(tmp_path / "no-such-run")
    monkeypatch.setattr(loratune.models.load, "inspect_model", lambda *a, **k: pytest.fail("model read first"))
    with pytest.raises(AdapterError, match="no-such-run: no such run or adapter directory"):
        train_run(cfg, log=lambda *_: None)
    assert not cfg.run_dir.exists()


def test_a_second_training_of_the_same_run_is_refused(tmp_path, tiny_llama_dir):
    from loratune.run_dir import open_run_dir

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="busy", max_steps=2)
    with open_run_dir(cfg.run_dir, resume=False, overwrite=False):  # another training holds it
        with pytest.raises(RunDirError, match="another training is using this run directory"):
            train_run(cfg, log=lambda *_: None)
    assert train_run(cfg, log=lambda *_: None).summary["steps"] == 2  # released on exit


def test_time_budget_fits_the_steps_and_runs_the_schedule_whole(tmp_path, tiny_llama_dir):
    cfg = make_cfg(tmp_path, tiny_llama_dir, name="budget", max_steps=100_000, eval_steps=None,
                   max_minutes=0.25, logging_steps=1, scheduler="cosine", warmup_ratio=0.1)
    messages = []
    result = train_run(cfg, log=messages.append)
    steps = result.summary["steps"]
    assert 6 <= steps < 100_000
    budget_lines = [m for m in messages if "max_minutes" in m]
    assert budget_lines and budget_lines[-1].endswith(f"-> {steps} steps"), budget_lines
    assert not any("over budget" in m for m in budget_lines)
    assert result.summary["max_minutes"] == 0.25
    lrs = [r["learning_rate"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
           if "learning_rate" in r]
    # The cosine reached its end: the last logged rate is a small fraction of the peak.
    assert lrs[-1] < 0.05 * max(lrs)
    # A loaded 2-core runner is slow: only a loose bound on the wall time (budget 15 s).
    assert result.summary["wall_time_s"] < 120


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_t5_dir"])
def test_batches_rounded_to_a_multiple_of_32_train_to_the_same_losses(tmp_path, which, request, monkeypatch):
    """Batches padded to a multiple of 32 tokens (the CPU default under bf16): the padding is masked,
    so the losses and the count of useful tokens are those of unrounded batches."""
    from transformers import DataCollatorForSeq2Seq

    widths, collate = [], DataCollatorForSeq2Seq.__call__

    def recording(self, features, *args):
        batch = collate(self, features, *args)
        widths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(DataCollatorForSeq2Seq, "__call__", recording)
    model_dir = request.getfixturevalue(which)

    def run(name, **train):
        widths.clear()
        cfg = make_cfg(tmp_path, model_dir, name=name, max_steps=8, eval_steps=4, logging_steps=2, **train)
        summary = train_run(cfg, log=lambda *_: None).summary
        return set(widths), train_losses(tmp_path / "runs" / name), summary

    rounded_widths, rounded, rounded_summary = run("rounded", pad_to_multiple_of=32)
    plain_widths, plain, plain_summary = run("plain", pad_to_multiple_of=1)
    default_widths, _, _ = run("default")
    assert rounded_widths == {32}
    assert plain_widths and all(w < 32 for w in plain_widths)
    bf16 = rounded_summary["precision"] == "bf16"
    assert default_widths == ({32} if bf16 else plain_widths)
    assert rounded_summary["train_tokens"] == plain_summary["train_tokens"] > 0
    tolerance = 1e-2 if bf16 else 1e-4  # bf16: the kernels picked per width round differently
    for got, expected in zip(rounded, plain):
        assert len(got) == len(expected) > 2
        assert got == pytest.approx(expected, rel=tolerance)


def test_zero_targets_is_an_error(tmp_path, tiny_llama_dir):
    cfg = make_cfg(tmp_path, tiny_llama_dir, name="none")
    cfg.lora.target_modules = ["no_such_module"]
    with pytest.raises(AdapterError, match="lora.target_modules"):
        train_run(cfg, log=lambda *_: None)


def test_a_killed_training_resumes_to_the_same_adapter(tmp_path, tiny_llama_dir):
    """SIGKILL a real `loratune train` after its first checkpoint; `--resume` must finish with the
    adapter an uninterrupted run makes (same seed, dropout off)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="whole", max_steps=60, eval_steps=10, save_total_limit=10)
    values = yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(cfg)))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(*extra):
        return [sys.executable, "-m", "loratune", "train", str(config), *extra]

    subprocess.run(command(), check=True, env=env, capture_output=True)
    killed_dir = cfg.run_dir.parent / "killed"
    proc = subprocess.Popen(command("--set", "name=killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = killed_dir / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file(), "the run never reached its first checkpoint"
    assert not (killed_dir / "adapter").exists(), "the run finished before it was killed"
    resumed = subprocess.run(command("--set", "name=killed", "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = load_file(cfg.run_dir / "adapter" / "adapter_model.safetensors")
    again = load_file(killed_dir / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == again.keys()
    for key in whole:
        scale = float(whole[key].abs().max())
        assert float((whole[key] - again[key]).abs().max()) <= 1e-4 * max(scale, 1e-8), key
    summary = json.loads((killed_dir / "run_summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 60


def test_keep_best_false_ends_with_the_last_weights(tmp_path, tiny_llama_dir):
    """With keep_best off the adapter is the last step's, never one chosen by loss on the eval rows."""
    from safetensors.torch import load_file

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="last", max_steps=6, eval_steps=3, keep_best=False,
                   save_total_limit=5, lr=0.5)  # a rate that makes the last step worse than the best
    result = train_run(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r["eval_loss"] for r in rows if "eval_loss" in r and r["step"] == 6][-1]
    assert result.summary["eval_loss_end"] == pytest.approx(last_eval)
    final = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    checkpoint = load_file(result.run_dir / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], checkpoint[k]) for k in final)


def test_a_requested_stop_ends_at_a_checkpoint_and_resume_finishes_the_run(tmp_path, tiny_llama_dir, monkeypatch):
    """`loratune stop` mid-run: a checkpoint at that step, no adapter, state interrupted, the lines it
    logged in log.txt; `--resume` finishes it."""
    from loratune.errors import TrainingStopped
    from loratune.run_status import read_status, request_stop, run_state, stop_requested
    from loratune.training.status import StopOnRequest

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="stopped", max_steps=8, eval_steps=6, logging_steps=2)
    run_dir = cfg.run_dir
    answer = StopOnRequest.on_step_end

    def ask_during_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            request_stop(run_dir)
        return answer(self, args, state, control, **kwargs)

    monkeypatch.setattr(StopOnRequest, "on_step_end", ask_during_step_3)
    messages = []
    with pytest.raises(TrainingStopped) as stopped:
        train_run(cfg, log=messages.append)
    assert str(stopped.value) == (f"stopped at step 3 of 8; checkpoint-3 saved; continue with "
                                  f"`loratune run {run_dir / 'config.yaml'} --resume`")
    assert (run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (run_dir / "adapter").exists() and not (run_dir / "run_summary.json").exists()
    status = read_status(run_dir)
    assert (status["state"], status["message"], status["step"], status["max_steps"]) == (
        "interrupted", str(stopped.value), 3, 8)
    assert run_state(run_dir).state == "interrupted" and not stop_requested(run_dir)
    assert (run_dir / "log.txt").read_text().splitlines() == messages

    monkeypatch.undo()
    result = train_run(cfg, resume=True, log=messages.append)
    assert result.summary["steps"] == 8 and (run_dir / "adapter" / "adapter_config.json").is_file()
    status = read_status(run_dir)
    assert (status["state"], status["message"], status["step"], status["max_steps"]) == ("trained", None, 8, 8)
    assert status["elapsed_s"] > 0 and status["tokens_per_s"] > 0 and status["eta_s"] == 0
    assert (run_dir / "log.txt").read_text().splitlines() == messages  # appended on resume
