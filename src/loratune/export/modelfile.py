"""The Ollama Modelfile written beside an exported GGUF: the run's chat template translated into
Ollama's Go TEMPLATE, its system prompt, stop tokens and the decoding evaluation used.

Kept apart from `export` (tensor conversion): this is about prompts, not weights. The chat template
is read by rendering it with marker messages rather than by parsing Jinja, so any template that is a
plain concatenation per role translates, and anything else is left to Ollama's own template library.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from loratune.config import GenerationSettings, read_yaml
from loratune.errors import ExportError


def generation_settings(adapter_dir: Path) -> dict[str, Any]:
    """The run's eval.generation settings (config.yaml beside the adapter), so Ollama decodes as evaluation did."""

    settings = asdict(GenerationSettings())
    config_path = adapter_dir.parent / "config.yaml"
    if config_path.is_file():
        settings.update(((read_yaml(config_path).get("eval") or {}).get("generation") or {}))
    return settings


def _chat_pieces(tokenizer: Any) -> tuple[dict[str, tuple[str, str]], str, str | None] | None:
    """Read a chat template by rendering it: per-role (prefix, suffix), the generation prompt, and
    the default system prompt it inserts. None when the template is not that simple concatenation."""
    marker = "\x00CONTENT\x00"

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    system = [{"role": "system", "content": marker}]
    try:
        head = render(system)
        pieces: dict[str, tuple[str, str]] = {}
        for role in ("system", "user", "assistant"):  # each role rendered after a system message
            text = render(system + [{"role": role, "content": marker}])[len(head):]
            if text.count(marker) != 1:
                return None
            pieces[role] = tuple(text.split(marker))  # type: ignore[assignment]
        generation = render(system, True)[len(head):]
        alone = render([{"role": "user", "content": marker}])
    except Exception:  # noqa: BLE001 - a template that rejects these messages is simply not translated
        return None
    # A system message must render the same first as later (no BOS or header), and a lone user
    # message must be the user piece, after at most a default system message the template inserts.
    (sys_prefix, sys_suffix), user_piece = pieces["system"], marker.join(pieces["user"])
    if head != sys_prefix + marker + sys_suffix or not alone.endswith(user_piece):
        return None
    inserted = alone[: len(alone) - len(user_piece)]
    if inserted and not (inserted.startswith(sys_prefix) and inserted.endswith(sys_suffix)):
        return None
    default_system = inserted[len(sys_prefix): len(inserted) - len(sys_suffix)] if inserted else None
    return pieces, generation, default_system


def _go_template(pieces: dict[str, tuple[str, str]], generation: str) -> str:
    """Ollama's Go template for the same prompt: each message wrapped by its role's prefix/suffix."""
    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}'
        for i, (role, (prefix, suffix)) in enumerate(pieces.items())
    )
    return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{generation}"


def modelfile_text(tokenizer: Any, gguf_name: str, meta: dict[str, Any], generation: dict[str, Any]) -> str:
    """An Ollama Modelfile: FROM the GGUF, the chat template as a Go TEMPLATE, SYSTEM, stop tokens, decoding."""
    lines = ["# Written by `loratune export`; create the model with: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}"]
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    template, system = "{{ .Prompt }}", None  # a run trained on plain prompts gets the prompt as is
    if meta.get("use_chat_template") is not False and getattr(tokenizer, "chat_template", None):
        parsed = _chat_pieces(tokenizer)
        if parsed is None:  # Ollama then matches the GGUF's tokenizer.chat_template against its own library
            template = None
            lines.append("# The chat template is too complex to translate; Ollama reads it from the GGUF.")
        else:
            pieces, generation_prompt, default_system = parsed
            template = _go_template(pieces, generation_prompt)
            system = meta.get("system_prompt") or default_system
            # A new turn starting is also the end of the answer.
            stops += [t for t in tokenizer.all_special_tokens if t in pieces["user"][0] and t not in stops]
    if '"""' in (template or "") + (system or ""):
        raise ExportError('the chat template or system prompt contains """, which a Modelfile cannot quote')
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{token}"' for token in stops]
    # Decode as evaluation did (greedy unless the run's config sampled).
    sampling = ({"temperature": generation["temperature"], "top_k": generation.get("top_k"),
                 "top_p": generation.get("top_p")} if generation.get("do_sample") else {"temperature": 0})
    sampling["repeat_penalty"] = generation.get("repetition_penalty", 1.0)
    sampling["num_predict"] = generation["max_new_tokens"]
    lines += [f"PARAMETER {key} {value}" for key, value in sampling.items()
              if value is not None and not (key == "repeat_penalty" and value == 1.0)]
    return "\n".join(lines) + "\n"
