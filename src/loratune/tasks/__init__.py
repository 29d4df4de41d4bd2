"""Task formats: how a data row becomes a prompt and a target.

`TASKS` is the one registry: task name -> Task. Each task lives in its own small module.
"""

from __future__ import annotations

from loratune.errors import ConfigError
from loratune.tasks.base import Task
from loratune.tasks.ectsum import ECTSUM, ECTSUM_LEAD
from loratune.tasks.finance import FINANCE_ALPACA
from loratune.tasks.generic import CHAT_MESSAGES, PROMPT_COMPLETION
from loratune.tasks.sql import LLAMA2_SQL, SQL_CREATE_CONTEXT
from loratune.tasks.summarize import CNN_DAILYMAIL
from loratune.tasks.tatqa import TATQA

TASKS: dict[str, Task] = {
    task.name: task
    for task in (FINANCE_ALPACA, SQL_CREATE_CONTEXT, LLAMA2_SQL, CNN_DAILYMAIL, TATQA, ECTSUM, ECTSUM_LEAD,
                 PROMPT_COMPLETION, CHAT_MESSAGES)
}


def get_task(name: str) -> Task:
    """Look a task up by name; unknown names raise a ConfigError listing the known ones."""

    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task: unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Task", "get_task"]
