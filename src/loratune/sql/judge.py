"""Judge predicted SQL against gold SQL: validity, normalised exact match, test-suite execution
accuracy on synthesized databases, and execution accuracy on a real database where there is one.

Per row:
- `valid`: the prediction parses (sqlglot, SQLite) as one read-only query and runs on the
  schema of the row's `context` (tables and columns exist), and no database it ran on had to
  stop it for time or result size;
- `exact_match`: its normalised form (`normalize.py`) equals the gold's, and SQLite accepts it
  on the context wherever it accepts the gold;
- `exec_match`: on every database synthesized for the pair (`num_dbs` of them, more where the
  gold's answer is empty or cut through ties on most; `plan.py`, `synth.py`) it returns the
  gold's result (`compare.py`), and the gold returns rows on at least one of them, so an
  empty-on-empty agreement proves nothing;
- `exec_match_real_db`: the same comparison on the row's real database (`db_dir/db_id/db_id.sqlite`,
  copied into memory read-only); None when the row has no database;
- `evidence`: the first rows and row counts of the prediction and the gold on one of those
  databases (`evidence.py` says which), so a reader can see why a verdict is what it is.
The gold is trusted: columns it uses that the context lacks (sql-create-context's contexts
are incomplete views of Spider's schemas) are added to the synthesized schema.
Whatever a prediction holds, judging it ends in a verdict: a failure becomes the row's `error`.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loratune.errors import SqlError
from loratune.sql.analyze import QueryFacts, analyze_query
from loratune.sql.compare import results_match
from loratune.sql.evidence import MAX_ERROR_CHARS, REAL, SCHEMA, Evidence, not_run, preferred, query_evidence
from loratune.sql.execute import QueryResult, memory_database, read_only_copy, run_query
from loratune.sql.normalize import normalized_sql
from loratune.sql.ordering import TieQuery, has_top_level_order, tie_query
from loratune.sql.plan import plan_database
from loratune.sql.safety import ParsedQuery, Rejected, parse_query
from loratune.sql.schema import Schema, parse_schema
from loratune.sql.synth import synthesize_database

logger = logging.getLogger(__name__)


@dataclass
class SqlRecord:
    """The verdicts for one prediction."""

    valid: bool
    exact_match: bool
    exec_match: bool
    exec_match_real_db: bool | None = None
    error: str | None = None
    """Why the prediction is invalid or did not run to the end (None when it ran cleanly)."""
    gold_error: str | None = None
    """Why the gold could not be judged on some database (a broken gold, a missing column)."""
    evidence: Evidence | None = field(default=None, compare=False, repr=False)
    """What the prediction and the gold returned on one database (`evidence.py`); not in `as_dict`."""

    def keep_evidence(self, evidence: Evidence) -> None:
        if preferred(evidence, self.evidence):
            self.evidence = evidence

    def as_dict(self) -> dict:
        out = asdict(self)
        del out["evidence"]
        if self.exec_match_real_db is None:
            del out["exec_match_real_db"]
        return out


@dataclass
class SqlJudgement:
    records: list[SqlRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        """{"n", "valid", "exact_match", "execution_accuracy", "execution_accuracy_real_db"} as
        fractions; the last is None when no row had a real database."""
        n = len(self.records)

        def mean(values: list[bool]) -> float | None:
            return sum(values) / len(values) if values else None

        real = [r.exec_match_real_db for r in self.records if r.exec_match_real_db is not None]
        return {
            "n": n,
            "valid": mean([r.valid for r in self.records]) or 0.0,
            "exact_match": mean([r.exact_match for r in self.records]) or 0.0,
            "execution_accuracy": mean([r.exec_match for r in self.records]) or 0.0,
            "execution_accuracy_real_db": mean(real),
        }


def judge_sql(
    golds: list[str],
    predictions: list[str],
    contexts: list[str],
    *,
    db_ids: list[str | None] | None = None,
    db_dir: str | Path | None = None,
    num_dbs: int = 8,
    seed: int = 0,
    timeout_s: float = 2.0,
    row_timeout_s: float | None = None,
) -> SqlJudgement:
    """Judge each prediction against its gold (lists aligned by position). Deterministic for a
    given `seed`: each row's databases are seeded from the seed and the row's own text.

    Every prediction gets a verdict: whatever goes wrong while judging one row (a query that
    runs too long, a value no database can hold, a bug in the judge) becomes that row's
    `error` with `exec_match` False, and the next row is judged. `timeout_s` bounds each query;
    `row_timeout_s` (default 10 x `timeout_s`) bounds a row's databases together, checked
    between queries. Only faults in the call's own inputs (misaligned lists, a missing database)
    raise SqlError."""
    if not len(golds) == len(predictions) == len(contexts):
        raise SqlError(
            f"SQL judging needs aligned lists: {len(golds)} gold queries, {len(predictions)} predictions, "
            f"{len(contexts)} contexts"
        )
    if db_ids is not None and len(db_ids) != len(golds):
        raise SqlError(f"SQL judging got {len(db_ids)} db_ids for {len(golds)} gold queries")
    if num_dbs < 1:
        raise SqlError(f"num_dbs must be at least 1, got {num_dbs}")
    if timeout_s <= 0 or (row_timeout_s is not None and row_timeout_s <= 0):
        raise SqlError(f"SQL time limits must be positive, got timeout_s={timeout_s}, row_timeout_s={row_timeout_s}")
    row_timeout = row_timeout_s if row_timeout_s is not None else ROW_TIMEOUT_FACTOR * timeout_s
    judge = _Judge(num_dbs=num_dbs, seed=seed, timeout_s=timeout_s, row_timeout_s=row_timeout)
    databases = _RealDatabases(Path(db_dir)) if db_dir is not None else None
    try:
        records = []
        for i, (gold, pred, context) in enumerate(zip(golds, predictions, contexts)):
            db_id = db_ids[i] if db_ids is not None else None
            real = databases.get(db_id) if databases is not None and db_id else None
            records.append(judge.judge_row(gold, pred, context, real))
        return SqlJudgement(records)
    finally:
        judge.close()
        if databases is not None:
            databases.close()


ROW_TIMEOUT_FACTOR = 10
"""A row may spend this many query time limits in all: each of its up to 3 x num_dbs databases
runs the gold and the prediction, and a prediction that takes just under the limit on each
must not hold the evaluation for minutes."""


class _OutOfTime(Exception):
    """Raised between queries when a row has spent its time; becomes the row's verdict."""


class _RealDatabases:
    """Spider layout `<dir>/<db_id>/<db_id>.sqlite`, each opened once as an in-memory copy."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SqlError(
                f"SQL database directory {root} does not exist; point --db-dir (or eval.sql.databases) "
                "at a folder laid out as <db_id>/<db_id>.sqlite"
            )
        self.root = root
        self._open: dict[str, sqlite3.Connection] = {}

    def get(self, db_id: str) -> sqlite3.Connection:
        if db_id not in self._open:
            path = self.root / db_id / f"{db_id}.sqlite"
            if not path.is_file():
                have = sorted(p.name for p in self.root.iterdir() if (p / f"{p.name}.sqlite").is_file())
                raise SqlError(
                    f"no database for db_id {db_id!r}: {path} does not exist "
                    f"(found {len(have)} databases in {self.root}: {', '.join(have[:10]) or 'none'})"
                )
            try:
                self._open[db_id] = read_only_copy(path)
            except sqlite3.Error as err:
                raise SqlError(f"cannot read SQLite database {path}: {err}") from err
        return self._open[db_id]

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()


@dataclass
class _Gold:
    parsed: ParsedQuery | Rejected
    ordered: bool = False
    normalized: str = ""
    facts: QueryFacts | None = None
    schema: Schema | None = None
    """The context's schema plus the columns the gold needs that it lacks."""
    ties: TieQuery | None = None
    extended: bool = False
    """True when the gold needed columns the context lacks."""


class _Judge:
    """Holds per-call caches (schemas, schema databases, gold analyses) and the settings."""

    def __init__(self, *, num_dbs: int, seed: int, timeout_s: float, row_timeout_s: float) -> None:
        self.num_dbs, self.seed, self.timeout_s, self.row_timeout_s = num_dbs, seed, timeout_s, row_timeout_s
        self._row_deadline = float("inf")
        self._schemas: dict[str, Schema] = {}
        self._schema_dbs: dict[str, sqlite3.Connection] = {}
        self._golds: dict[tuple[str, str], _Gold] = {}
        self._runaway = False
        """Set when the prediction being judged hit a limit: it is not run again."""

    def close(self) -> None:
        for conn in self._schema_dbs.values():
            conn.close()

    def run(self, conn: sqlite3.Connection, sql: str) -> QueryResult:
        if time.monotonic() > self._row_deadline:
            raise _OutOfTime(f"stopped: judging this row passed its {self.row_timeout_s:g}s time limit")
        return run_query(conn, sql, timeout_s=self.timeout_s)

    def schema(self, context: str) -> Schema:
        if context not in self._schemas:
            self._schemas[context] = parse_schema(context)
        return self._schemas[context]

    def schema_db(self, context: str) -> sqlite3.Connection:
        if context not in self._schema_dbs:
            self._schema_dbs[context] = memory_database(self.schema(context).ddl())
        return self._schema_dbs[context]

    def gold(self, gold: str, context: str) -> _Gold:
        key = (gold, context)
        if key not in self._golds:
            parsed = parse_query(gold)
            info = _Gold(parsed)
            if isinstance(parsed, ParsedQuery):
                schema = self.schema(context).copy()
                info.facts = analyze_query(parsed.tree, schema)
                for table, column in info.facts.missing:
                    schema.add_column(table, column)
                info.extended = bool(info.facts.missing)
                info.schema = schema
                info.ordered = has_top_level_order(parsed.tree)
                info.normalized = normalized_sql(parsed.tree, schema)
                info.ties = tie_query(parsed.tree) if info.ordered else None
            self._golds[key] = info
        return self._golds[key]

    def judge_row(self, gold_text: str, pred_text: str, context: str, real: sqlite3.Connection | None) -> SqlRecord:
        """`judge`, with anything that goes wrong turned into the row's verdict: one bad
        prediction (or one bug here) must not lose a whole evaluation."""
        real_verdict = False if real is not None else None
        self._row_deadline = time.monotonic() + self.row_timeout_s
        try:
            record = self.judge(gold_text, pred_text, context, real)
        except _OutOfTime as stop:  # the prediction or the gold ran long on many databases
            record = SqlRecord(False, False, False, real_verdict, error=str(stop))
        except Exception as err:  # noqa: BLE001 - the safety net: every row gets a verdict
            logger.debug("judging a row failed", exc_info=True)
            record = SqlRecord(False, False, False, real_verdict, error=f"could not judge: {type(err).__name__}: {err}")
        finally:
            self._row_deadline = float("inf")
        for name in ("error", "gold_error"):
            text = getattr(record, name)
            if text is not None and len(text) > MAX_ERROR_CHARS:
                setattr(record, name, text[: MAX_ERROR_CHARS - 3] + "...")
        if record.evidence is None:
            record.evidence = not_run(record.error)
        return record

    def judge(self, gold_text: str, pred_text: str, context: str, real: sqlite3.Connection | None) -> SqlRecord:
        gold = self.gold(gold_text, context)
        pred = parse_query(pred_text)
        real_verdict = False if real is not None else None
        if isinstance(pred, Rejected):
            return SqlRecord(False, False, False, real_verdict, error=pred.reason)
        checked = self.run(self.schema_db(context), pred.text)
        record = SqlRecord(checked.ok, False, False, real_verdict, error=checked.error)
        record.keep_evidence(query_evidence(SCHEMA, checked, None, False))
        if checked.runaway:
            return record  # stopped once, not run again on every database
        if not isinstance(gold.parsed, ParsedQuery) or gold.schema is None or gold.facts is None:
            record.gold_error = f"gold does not parse: {gold.parsed.reason}"  # type: ignore[union-attr]
            return record
        try:
            # sqlglot forgives some text SQLite refuses (`BETWEEN 1 9`, a no-break space): a
            # prediction that does not run on the context is not the gold's query, unless the
            # gold does not run there either (it needed columns the context lacks)
            if checked.ok or gold.extended:
                record.exact_match = normalized_sql(pred.tree, gold.schema) == gold.normalized
            self._runaway = False
            # a prediction that fails on the context fails the same way on the synthesized
            # databases, unless the gold added the columns it lacked; the real database may differ
            if checked.ok or gold.extended:
                record.exec_match = self._test_suite(gold, pred, context, record)
            if real is not None and not self._runaway:
                record.exec_match_real_db = self._same_result(real, gold, pred, record)
        except RecursionError:  # a tree that parsed but is too deep to walk: treat it as the parser would
            return SqlRecord(False, False, False, real_verdict, error="query nested too deeply to analyse")
        return record

    def _test_suite(self, gold: _Gold, pred: ParsedQuery, context: str, record: SqlRecord) -> bool:
        """Compare on databases 0 .. num_dbs-1, and on up to 2 * num_dbs more until num_dbs of
        them were decisive for the gold: an informative result (rows with something other than
        0 or NULL) that LIMIT does not cut inside a group of tied rows. A database where the
        gold's answer is empty or arbitrary tells little."""
        assert isinstance(gold.parsed, ParsedQuery) and gold.schema is not None and gold.facts is not None
        pred_facts = analyze_query(pred.tree, gold.schema)
        plan = plan_database(gold.schema, gold.facts, [pred_facts])
        # surrogatepass: a prediction may hold a lone surrogate (valid JSON, not UTF-8); valid text hashes as before
        text = "\0".join((context, gold.parsed.text, pred.text))
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        seed = f"{self.seed}:{digest}"
        gold_ran = gold_rows_seen = False
        decisive = 0
        for index in range(3 * self.num_dbs):
            if index >= self.num_dbs and decisive >= self.num_dbs:
                break
            conn = synthesize_database(plan, seed=seed, index=index)
            try:
                gold_result = self.run(conn, gold.parsed.text)
                if not gold_result.ok or gold_result.rows is None:
                    record.gold_error = f"gold failed on a synthesized database: {gold_result.error}"
                    if gold_result.timed_out:
                        break  # the next databases are as big: do not spend the limit on each
                    continue
                gold_ran = True
                gold_rows_seen = gold_rows_seen or bool(gold_result.rows)
                if _informative(gold_result.rows) and not self._tied_at_limit(conn, gold):
                    decisive += 1
                if not self._matches(conn, gold, gold_result, pred, record, f"synthesized {index}"):
                    return False
            finally:
                conn.close()
        return gold_ran and gold_rows_seen

    def _tied_at_limit(self, conn: sqlite3.Connection, gold: _Gold) -> bool:
        """True when the gold's LIMIT cuts through rows that tie on its sort keys."""
        if gold.ties is None or gold.ties.limit is None:
            return False
        full = self.run(conn, gold.ties.sql)
        limit, width = gold.ties.limit, gold.ties.width
        if not full.ok or full.rows is None or len(full.rows) <= limit or limit < 1:
            return False
        return full.rows[limit - 1][width:] == full.rows[limit][width:]

    def _same_result(self, conn: sqlite3.Connection, gold: _Gold, pred: ParsedQuery, record: SqlRecord) -> bool:
        assert isinstance(gold.parsed, ParsedQuery)
        gold_result = self.run(conn, gold.parsed.text)
        if not gold_result.ok:
            record.gold_error = f"gold failed on the real database: {gold_result.error}"
            return False
        return self._matches(conn, gold, gold_result, pred, record, REAL)

    def _matches(self, conn: sqlite3.Connection, gold: _Gold, gold_result: QueryResult, pred: ParsedQuery,
                 record: SqlRecord, database: str) -> bool:
        """Run the prediction on `conn` and compare it with the gold's result there; the record
        keeps the run as its evidence when it is the one to show."""
        pred_result = self.run(conn, pred.text)
        match = self._same_answer(conn, gold, gold_result, pred_result, record)
        record.keep_evidence(query_evidence(database, pred_result, gold_result, match))
        return match

    def _same_answer(self, conn: sqlite3.Connection, gold: _Gold, gold_result: QueryResult, pred_result: QueryResult,
                     record: SqlRecord) -> bool:
        if not pred_result.ok:
            if pred_result.runaway:  # stopped by a limit: invalid, whatever it did on the schema
                record.valid, record.error = False, pred_result.error
                self._runaway = True
            record.error = record.error or pred_result.error
            return False
        assert gold_result.rows is not None and pred_result.rows is not None
        if results_match(gold_result.rows, pred_result.rows, ordered=gold.ordered):
            return True
        if gold.ordered and gold.ties is not None:
            full = self.run(conn, gold.ties.sql)
            if full.ok and full.rows is not None:
                return results_match(
                    gold_result.rows, pred_result.rows, ordered=True, gold_full=full.rows, width=gold.ties.width
                )
        return False


def _informative(rows: list[tuple]) -> bool:
    """Rows that say something: not empty, and not only zero counts and NULL aggregates."""
    return any(value not in (0, None) for row in rows for value in row)
