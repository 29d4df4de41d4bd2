"""One request's generation as the decode loop sees it: prompt ids, limits, sampling, and a sink
that receives the answer piece by piece.

The decode loop (`inference/engine.py`) hands each row's newest token to `Job.push_token`, which
decodes it, sends the new text, and finishes the job on EOS, a stop string, its own
`max_tokens`, or a client that went away. `choose_tokens` picks every row's next token under
that row's own sampling settings, so greedy and sampled requests share one batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    """Temperature 0 means greedy, as in OpenAI's API; rows share a batch only with equal sampling."""

    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def key(self) -> tuple:
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)


@dataclass
class JobEvent:
    """What a job's sink receives: text pieces, then exactly one `done` or `error`."""

    type: str  # "delta" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    status: int = 500


class Job:
    """One request's generation, consumed through `sink` (called from the generating thread).

    Pieces are sent as soon as they are certain: half UTF-8 characters, a possible start of a stop
    string and trailing whitespace wait for the next token. With `strip`, leading and final
    whitespace are dropped, so the pieces join to exactly the stripped answer evaluation scores.
    """

    def __init__(
        self,
        adapter: str,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        sampling: Sampling = Sampling(),
        stop: Iterable[str] = (),
        strip: bool = False,
        sink: Callable[[JobEvent], None] = lambda event: None,
    ) -> None:
        self.adapter = adapter
        self.prompt_ids = list(prompt_ids)
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = tuple(s for s in stop if s)
        self.strip = strip
        self.sink = sink
        self.tokens: list[int] = []
        self.completion_tokens = 0
        self.text = ""
        """The answer sent so far; the whole answer once the job is finished."""
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.created = time.perf_counter()
        self._cancelled = threading.Event()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating for this job (the client went away); its batch-mates carry on."""
        self._cancelled.set()

    def fail(self, message: str, status: int = 500) -> None:
        if not self.finished:
            self.error = message
            self.sink(JobEvent("error", text=message, status=status))

    def push_token(self, token: int, tokenizer: Any, eos_ids: set[int]) -> None:
        """Take the next generated token: send new text, and finish on EOS, stop string or limit."""
        if self.finished:
            return
        if self.cancelled:
            self._finish("cancelled")
            return
        self.completion_tokens += 1
        if token in eos_ids:
            self._emit(tokenizer.decode(self.tokens, skip_special_tokens=True), final=True)
            self._finish("stop")
            return
        self.tokens.append(token)
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._emit(text[: min(hits)], final=True)
            self._finish("stop")
        elif len(self.tokens) >= self.max_tokens:
            self._emit(text, final=True)
            self._finish("length")
        else:
            self._emit(text, final=False)

    def close(self) -> None:
        """Called when generation ended without this job finishing (cancelled while queued)."""
        if not self.finished:
            self._finish("cancelled" if self.cancelled else "length")

    def _emit(self, text: str, *, final: bool) -> None:
        if self.strip:
            text = text.lstrip()
        if not final:
            # An incomplete UTF-8 character decodes to U+FFFD until its last byte arrives, and
            # the start of a stop string must not be sent before we know it is one.
            text = text.rstrip("\ufffd")
            for stop in self.stop:
                for k in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:k]):
                        text = text[:-k]
                        break
            # Trailing spaces wait for the next token: tokenizers that clean up spaces
            # (" ." -> ".") may still take them back, and a stripped answer must not end in one.
            text = text.rstrip()
        elif self.strip:
            text = text.rstrip()
        if text.startswith(self.text) and len(text) > len(self.text):
            piece = text[len(self.text):]
            self.text = text
            self.sink(JobEvent("delta", text=piece))

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.sink(JobEvent("done", finish_reason=reason))


def choose_tokens(logits: torch.Tensor, samplings: list[Sampling]) -> list[int]:
    """The next token of each row: argmax for greedy rows (as `generate` picks it), else a draw
    from the temperature-scaled distribution cut to its top-p nucleus."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1).tolist()
    for row, sampling in enumerate(samplings):
        if sampling.greedy:
            continue
        probs = torch.softmax(logits[row] / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            # Keep the smallest set of tokens whose mass reaches top_p (always the first one).
            outside = ordered.cumsum(0) - ordered >= sampling.top_p
            probs = torch.zeros_like(probs).scatter(0, order, ordered.masked_fill(outside, 0.0))
        chosen[row] = int(torch.multinomial(probs, 1))
    return chosen
