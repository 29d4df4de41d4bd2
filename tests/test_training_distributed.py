"""torchrun: 2 CPU processes x batch 4 train exactly what 1 process x batch 8 trains (gloo, DDP), and
read the same eval loss."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest
import yaml
from run_helpers import PAIRS, make_cfg


@pytest.mark.slow
@pytest.mark.parametrize("group_by_length", [True, False])
def test_two_ranks_match_one_process(tmp_path, tiny_llama_dir, group_by_length):
    from safetensors.torch import load_file

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cfg = make_cfg(tmp_path, tiny_llama_dir, name="one", max_steps=6, batch_size=8, eval_steps=3, logging_steps=1,
                   group_by_length=group_by_length)
    # 48 rows: whole global batches. With a remainder, accelerate pads the shorter process's last
    # batch with repeated rows, so that one step of each epoch differs from a single process's.
    rows = [{"prompt": f"Fruit of colour {c} ({i}):", "completion": f" {f}" * (1 + i % 3)}
            for i in range(8) for c, f in PAIRS]
    data = tmp_path / "fruit48.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg.data.train = cfg.data.eval = str(data)
    # 7 eval rows: 1 process evaluates them in one batch; 2 processes in batches of 4, and accelerate
    # fills the second process's batch up with the first row again. The eval loss must not count it.
    cfg.data.max_eval_rows = 7
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(cfg)))
    # fp32 on both sides: bf16 would round the per-process halves differently from the whole batch.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORATUNE_PRECISION": "fp32"}
    subprocess.run([sys.executable, "-m", "loratune", "train", str(config)], check=True, env=env, capture_output=True)
    two = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "loratune", "train", str(config),
         "--set", "name=two", "--set", "train.batch_size=4"],
        env=env, capture_output=True, text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    runs = cfg.run_dir.parent

    def losses(name):
        rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r], [r["eval_loss"] for r in rows if "eval_loss" in r]

    (one_train, one_eval), (two_train, two_eval) = losses("one"), losses("two")
    assert len(one_train) == len(two_train) == 6
    assert two_train == pytest.approx(one_train, abs=1e-4)
    assert two_eval == pytest.approx(one_eval, abs=1e-4)
    a = load_file(runs / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert float((a[key] - b[key]).abs().max()) <= 1e-4 * max(float(a[key].abs().max()), 1e-8), key
    summary = json.loads((runs / "two" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    # Only rank 0 wrote: one summary line per step in the log, not two.
    steps = [json.loads(line)["step"] for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
