"""Helpers shared by the serving tests (and bench/serve_speed.py): a uvicorn server in a thread,
adapter runs with random LoRA weights, and the offline answers the server must reproduce."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import openai
import torch

from loratune.config import DataSettings, GenerationSettings
from loratune.data import eval_prompts
from loratune.errors import ServeError
from loratune.inference.generate import generate_texts
from loratune.models.load import load_model
from loratune.tasks import get_task


class BackgroundServer:
    """uvicorn in a background thread on 127.0.0.1: `with BackgroundServer(app) as s: s.url`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self.server.run, name="loratune-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SQL_MESSAGE = "How many singers are older than 30? CREATE TABLE singer (name TEXT, age INTEGER)"
FIN_MESSAGE = "What is a bond?"


def make_adapter_run(base_dir: Path, run_dir: Path, *, task: str | None, seed: int,
                     max_source_tokens: int = 512, lora_alpha: int = 64) -> Path:
    """A run directory like `loratune train` writes, with random (non-zero) LoRA weights, so
    each adapter changes the model's outputs in its own way."""
    from peft import LoraConfig, TaskType, get_peft_model

    loaded = load_model(str(base_dir))
    causal = loaded.model_type == "causal"
    torch.manual_seed(seed)
    model = get_peft_model(loaded.model, LoraConfig(
        r=4, lora_alpha=lora_alpha, target_modules=["q_proj", "v_proj"] if causal else ["q", "v"],
        init_lora_weights=False, task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_2_SEQ_LM,
    ))
    adapter_dir = run_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    loaded.tokenizer.save_pretrained(str(adapter_dir))
    meta = {
        "name": run_dir.name, "task": task, "base_model": str(base_dir), "base_path": str(base_dir),
        "model_type": loaded.model_type, "use_chat_template": None, "system_prompt": None,
        "max_source_tokens": max_source_tokens, "max_target_tokens": 64, "init_adapter": None,
    }
    (adapter_dir / "loratune.json").write_text(json.dumps(meta), encoding="utf-8")
    return run_dir


def offline_answers(base_dir: Path, run_dir: Path | None, prompts: list[str], max_new_tokens: int,
                    task_family: str = "text") -> list[str]:
    """Greedy answers from a freshly loaded base (+ one adapter), one prompt at a time."""
    from peft import PeftModel

    loaded = load_model(str(base_dir))
    model = loaded.model if run_dir is None else PeftModel.from_pretrained(loaded.model, str(run_dir / "adapter"))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return generate_texts(model, loaded.tokenizer, loaded.model_type, prompts, settings, batch_size=1, task_family=task_family)


def training_prompt(base_dir: Path, task_name: str, message: str, max_source_tokens: int = 512) -> str:
    """The prompt training and evaluation build for a row made from a chat message."""
    task = get_task(task_name)
    loaded = load_model(str(base_dir))
    cfg = DataSettings(max_source_tokens=max_source_tokens)
    return eval_prompts([task.row_from_message(message)], task, loaded.tokenizer, loaded.model_type, cfg)[0]


def client_for(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def sequential_logits(registry: Any, name: str, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """The logits a request alone (batch 1) sees at each answer position, teacher-forced through
    the registry's model in its serving precision: row i scores the choice of `answer[i]`, and one
    more row scores what follows the answer."""
    with registry.lock, registry.forward_for([name]) as (model, extra):
        device = model.get_input_embeddings().weight.device  # the served model may be on a GPU
        if registry.model_type == "causal":
            logits = model(input_ids=torch.tensor([prompt + answer], device=device), **extra).logits[0].float()
            return logits[len(prompt) - 1 : len(prompt) + len(answer)].cpu()
        decoder = [model.config.decoder_start_token_id, *answer]
        return model(input_ids=torch.tensor([prompt], device=device),
                     decoder_input_ids=torch.tensor([decoder], device=device), **extra).logits[0].float().cpu()


def agrees_up_to_bf16_ties(got: list[int], expected: list[int], logits: torch.Tensor, eos_id: int,
                           ulps: int = 4) -> bool:
    """True when `got` equals `expected`, or first differs where the token `got` chose (EOS when it
    ended there) scores within `ulps` bf16 rounding steps of the best logit of the sequential run:
    a near-tie that bf16 rounding in a differently shaped batch may flip. Anything else is a bug."""
    for i, (mine, theirs) in enumerate(zip([*got, eos_id], [*expected, eos_id])):
        if mine != theirs:
            row = logits[i]
            best = float(row.max())
            ulp = 2.0 ** (math.floor(math.log2(max(abs(best), 1e-6))) - 7)  # bf16 keeps 8 significant bits
            return best - float(row[mine]) <= ulps * ulp
    return True
