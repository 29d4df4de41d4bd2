"""SQL judged by execution: validity, normalised exact match, test-suite execution accuracy on
synthesized databases, and execution accuracy on real (Spider-style) databases."""

from loratune.sql.files import read_gold, read_predictions, sql_eval_files
from loratune.sql.judge import SqlJudgement, SqlRecord, judge_sql

__all__ = ["SqlJudgement", "SqlRecord", "judge_sql", "read_gold", "read_predictions", "sql_eval_files"]
