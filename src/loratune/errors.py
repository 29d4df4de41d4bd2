"""The package's exception types.

Every error a user can cause (a bad config, a missing file, a model that will not load) is a
`LoratuneError`. The CLI prints its message as one line and exits non-zero, so messages say
what went wrong, where (file, line, key), and how to fix it.
"""

from __future__ import annotations


class LoratuneError(Exception):
    """Base class: a problem the user can act on. The CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(LoratuneError):
    """Raised when a config file or a `--set` override is malformed: unknown key, wrong type,
    value out of range. The message names the key and the file."""

    exit_code = 2


class DataError(LoratuneError):
    """Raised when a data file cannot be read or lacks what the task needs: missing file,
    empty file, malformed JSONL line, missing column. The message names the file and line."""


class ModelError(LoratuneError):
    """Raised when a model source cannot be resolved or loaded (unknown name, missing file,
    hub unreachable)."""


class ChecksumError(ModelError):
    """Raised when a downloaded or cached model file does not match its recorded sha256."""


class AdapterError(LoratuneError):
    """Raised when an adapter or run directory is missing, incomplete or incompatible, or when
    LoRA would train zero parameters."""


class RunDirError(LoratuneError):
    """Raised when a run directory is missing or is not one, already holds an earlier run
    (an adapter or a checkpoint), has nothing to resume, or is in use by another training."""


class TrainingError(LoratuneError):
    """Raised when training goes wrong in a way no setting check could see first: a loss that is
    not finite (NaN or infinite)."""


class TrainingStopped(LoratuneError):
    """Raised when a training stops because a stop was asked for (`loratune stop`, the ui's Stop):
    it saved a checkpoint and no adapter. The message says at which step and the command that
    continues it; `loratune run` does not evaluate and exits 3."""

    exit_code = 3


class SqlError(LoratuneError):
    """Raised when SQL evaluation inputs are malformed (misaligned gold and predictions,
    missing database directory)."""


class ServeError(LoratuneError):
    """Raised when the server cannot start with the given adapters or options."""


class ExportError(LoratuneError):
    """Raised when a run cannot be exported (GGUF, Ollama): bad --format or --outtype, an output that
    already exists, or an architecture, tokenizer or adapter option the target format cannot express."""


class RequestError(ServeError):
    """Raised while handling an HTTP request that cannot be served as asked (bad parameter,
    unknown model, prompt over the context, adapter folder outside `--adapter-root`). The server
    answers with `status` and an OpenAI-style error body naming the offending parameter."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class AdapterExists(ServeError):
    """Raised when an adapter is loaded under a name already in use (HTTP 409)."""


class QueueFull(ServeError):
    """Raised when the server's bounded request queue is full (HTTP 429: retry shortly)."""


class AnswerError(LoratuneError):
    """Raised when a model's TAT-QA answer cannot be read: no `answer:` or `calculation:` line, an
    unknown scale word, or a calculation that is not plain arithmetic (a stray character, unbalanced
    brackets, division by zero). The message quotes the offending text and its position."""
