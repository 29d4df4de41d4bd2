"""Check the test-suite SQL judge against real databases.

On the Spider rows that come with their real database (val_with_db.jsonl + databases/):
1. gold against itself must score 100% both on the synthesized databases and on the real one;
2. equivalent rewrites of the gold (renamed aliases, keyword case, swapped AND operands,
   `a = 'x'` written `'x' = a`, redundant parentheses) must be accepted;
3. perturbed golds (changed constant, flipped comparison, dropped WHERE condition, wrong
   column, wrong aggregate, dropped DISTINCT, reversed ORDER BY, dropped LIMIT) are judged
   both ways. A false accept (test suite says match, the real database shows a difference) is
   the judge's error; the other disagreement (test suite says differ, real database returns
   the same rows) is mostly the real data failing to tell the queries apart.
Rewrites and perturbations are sqlglot AST transforms; a perturbation is applied at each place
it fits (one place per perturbed query), so the run is deterministic. Prints a markdown table (and, with --show, examples).

    .venv/bin/python bench/sql_suite_agreement.py [--data FILE] [--db-dir DIR] [--dbs 8] [--show 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import TokenType

from loratune.sql import judge_sql
from loratune.sql.analyze import from_sources
from loratune.sql.execute import read_only_copy, run_query
from loratune.sql.safety import clean_sql
from loratune.sql.schema import parse_schema

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sql-create-context-spider"
if not DATA.is_dir():  # the same 115 rows and 5 databases ship in the repo
    DATA = Path(__file__).resolve().parents[1] / "data" / "sql-create-context"
Transform = Callable[[exp.Expression, str, str], "str | list[str] | None"]


def _sql(tree: exp.Expression) -> str:
    return tree.sql(dialect="sqlite")


def _first(tree: exp.Expression, *types: type) -> exp.Expression | None:
    return next(iter(tree.find_all(*types)), None)


# ---- equivalent rewrites -------------------------------------------------------------------


def rename_aliases(tree: exp.Expression, _text: str, _context: str) -> str:
    """Give every table a fresh alias (`T1` -> `alias_1`, or a new alias where there was none)."""
    tree = tree.copy()
    counter = 0
    for select in tree.find_all(exp.Select):
        renames: dict[str, str] = {}
        for source in from_sources(select):
            if isinstance(source, exp.Table):
                counter += 1
                if source.alias:
                    renames[source.alias.lower()] = f"alias_{counter}"
                source.set("alias", exp.TableAlias(this=exp.to_identifier(f"alias_{counter}")))
                if not renames.get(source.alias.lower()):
                    renames[source.name.lower()] = f"alias_{counter}"
        for column in select.find_all(exp.Column):
            if column.table and column.table.lower() in renames and column.find_ancestor(exp.Select) is select:
                column.set("table", exp.to_identifier(renames[column.table.lower()]))
    return _sql(tree)


def keyword_case(_tree: exp.Expression, text: str, _context: str) -> str:
    """Swap the case of every keyword and function name in the original text."""
    tokens = SQLite().tokenize(text)
    out, last = [], 0
    for i, token in enumerate(tokens):
        is_function = token.token_type == TokenType.VAR and i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN
        is_keyword = token.token_type not in (TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING, TokenType.NUMBER) and token.text.replace(" ", "").isalpha()
        if is_function or is_keyword:
            out.append(text[last : token.start] + text[token.start : token.end + 1].swapcase())
            last = token.end + 1
    return "".join(out) + text[last:]


def swap_and(tree: exp.Expression, _text: str, _context: str) -> str | None:
    tree = tree.copy()
    node = _first(tree, exp.And)
    if node is None:
        return None
    node.replace(exp.And(this=node.expression.copy(), expression=node.this.copy()))
    return _sql(tree)


def constant_first(tree: exp.Expression, _text: str, _context: str) -> str | None:
    tree = tree.copy()
    for node in tree.find_all(exp.EQ):
        if isinstance(node.expression, exp.Literal) or (isinstance(node.expression, exp.Column) and node.expression.this.quoted):
            node.replace(exp.EQ(this=node.expression.copy(), expression=node.this.copy()))
            return _sql(tree)
    return None


def redundant_parens(tree: exp.Expression, _text: str, _context: str) -> str:
    """Parenthesize the WHERE condition and each comparison in it (or each output column)."""
    tree = tree.copy()
    where = _first(tree, exp.Where)
    if where is not None:
        for node in list(where.find_all(exp.EQ, exp.GT, exp.LT, exp.GTE, exp.LTE, exp.NEQ)):
            node.replace(exp.Paren(this=node.copy()))
        where.set("this", exp.Paren(this=where.this.copy()))
    else:
        select = _first(tree, exp.Select)
        for projection in list(select.expressions):
            if isinstance(projection, exp.Column):
                projection.replace(exp.Paren(this=projection.copy()))
    return _sql(tree)


# ---- perturbations: each applied at every place it fits, one place per perturbed query ----


def _each(tree: exp.Expression, types: tuple, mutate: Callable[[exp.Expression], bool]) -> list[str]:
    """For the i-th node of `types` (i = 0, 1, ...), a copy of the query with `mutate` applied to
    that node alone; `mutate` returns False where it does not apply."""
    out = []
    count = len(list(tree.find_all(*types)))
    for i in range(count):
        copy = tree.copy()
        node = list(copy.find_all(*types))[i]
        if mutate(node):
            sql = _sql(copy)
            if sql not in out:
                out.append(sql)
    return out


def changed_constant(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    def mutate(node: exp.Expression) -> bool:
        if node.find_ancestor(exp.Limit) is not None:
            return False
        if isinstance(node, exp.Literal) and node.is_string:
            node.replace(exp.Literal.string(node.this + " x"))
        elif isinstance(node, exp.Literal):
            node.replace(exp.Literal.number(int(float(node.this)) + 1))
        elif isinstance(node, exp.Column) and node.this.quoted and not node.table:
            node.replace(exp.Literal.string(node.name + " x"))
        else:
            return False
        return True

    return _each(tree, (exp.Literal, exp.Column), mutate)


_FLIP = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE, exp.EQ: exp.NEQ, exp.NEQ: exp.EQ}


def flipped_comparison(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    def mutate(node: exp.Expression) -> bool:
        if isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Column):
            return False  # a join key: flipping it is a different bug than a flipped filter
        node.replace(_FLIP[type(node)](this=node.this.copy(), expression=node.expression.copy()))
        return True

    return _each(tree, tuple(_FLIP), mutate)


def dropped_condition(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    """Drop one operand of an AND/OR in a WHERE, or a WHERE with a single condition."""

    def mutate(node: exp.Expression) -> bool:
        if isinstance(node, exp.Where):
            if isinstance(node.this, (exp.And, exp.Or)):
                return False
            node.pop()
            return True
        if node.find_ancestor(exp.Where, exp.Join, exp.Having) is None or not isinstance(node.find_ancestor(exp.Where, exp.Join, exp.Having), exp.Where):
            return False
        node.replace(node.this.copy())
        return True

    variants = _each(tree, (exp.Where, exp.And, exp.Or), mutate)

    def mutate_right(node: exp.Expression) -> bool:
        if not isinstance(node.find_ancestor(exp.Where, exp.Join, exp.Having), exp.Where):
            return False
        node.replace(node.expression.copy())
        return True

    return variants + [v for v in _each(tree, (exp.And, exp.Or), mutate_right) if v not in variants]


def wrong_column(tree: exp.Expression, _text: str, context: str) -> list[str]:
    """Replace one column by another column of the same table in the context."""
    schema = parse_schema(context)

    def mutate(column: exp.Expression) -> bool:
        select = column.find_ancestor(exp.Select)
        if select is None or (isinstance(column.this, exp.Identifier) and column.this.quoted and not column.table):
            return False
        scope = {s.alias_or_name.lower(): s.name for s in from_sources(select) if isinstance(s, exp.Table)}
        table_name = scope.get(column.table.lower()) if column.table else next(iter(scope.values()), None)
        table = schema.table(table_name) if table_name else None
        others = [c.name for c in table.columns if c.name.lower() != column.name.lower()] if table else []
        if not others:
            return False
        column.set("this", exp.to_identifier(others[0]))
        return True

    return _each(tree, (exp.Column,), mutate)


_AGGREGATE_SWAP = {exp.Max: exp.Min, exp.Min: exp.Max, exp.Avg: exp.Sum, exp.Sum: exp.Avg}


def wrong_aggregate(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    def mutate(node: exp.Expression) -> bool:
        if isinstance(node, exp.Count):
            if isinstance(node.this, exp.Star):
                return False
            node.replace(exp.Max(this=node.this.copy()))
        else:
            node.replace(_AGGREGATE_SWAP[type(node)](this=node.this.copy()))
        return True

    return _each(tree, (*_AGGREGATE_SWAP, exp.Count), mutate)


def dropped_distinct(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    def mutate(node: exp.Expression) -> bool:
        if isinstance(node.parent, exp.Count):
            node.replace(node.expressions[0].copy())
        else:
            node.pop()
        return True

    return _each(tree, (exp.Distinct,), mutate)


def reversed_order(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    def mutate(node: exp.Expression) -> bool:
        node.set("desc", not node.args.get("desc"))
        node.set("nulls_first", None)
        return True

    return _each(tree, (exp.Ordered,), mutate)


def dropped_limit(tree: exp.Expression, _text: str, _context: str) -> list[str]:
    def mutate(node: exp.Expression) -> bool:
        node.pop()
        return True

    return _each(tree, (exp.Limit,), mutate)


REWRITES: dict[str, Transform] = {
    "renamed aliases": rename_aliases,
    "keyword case": keyword_case,
    "swapped AND operands": swap_and,
    "'x' = a": constant_first,
    "redundant parentheses": redundant_parens,
}
PERTURBATIONS: dict[str, Transform] = {
    "changed constant": changed_constant,
    "flipped comparison": flipped_comparison,
    "dropped WHERE condition": dropped_condition,
    "wrong column": wrong_column,
    "wrong aggregate": wrong_aggregate,
    "dropped DISTINCT": dropped_distinct,
    "reversed ORDER BY": reversed_order,
    "dropped LIMIT": dropped_limit,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "val_with_db.jsonl")
    parser.add_argument("--db-dir", type=Path, default=DATA / "databases")
    parser.add_argument("--dbs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="print this many disagreements of each kind")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]

    cases: list[tuple[str, str, dict, str]] = []  # (group, transform name, row, predicted SQL)
    for row in rows:
        cases.append(("gold", "gold itself", row, row["answer"]))
        tree = sqlglot.parse_one(clean_sql(row["answer"]), read="sqlite")
        for group, transforms in (("rewrite", REWRITES), ("perturbation", PERTURBATIONS)):
            for name, transform in transforms.items():
                made = transform(tree, clean_sql(row["answer"]), row["context"])
                for sql in [made] if isinstance(made, str) else made or []:
                    cases.append((group, name, row, sql))
    started = time.perf_counter()
    judgement = judge_sql(
        [r["answer"] for _g, _n, r, _s in cases],
        [sql for _g, _n, _r, sql in cases],
        [r["context"] for _g, _n, r, _s in cases],
        db_ids=[r["db_id"] for _g, _n, r, _s in cases],
        db_dir=args.db_dir,
        num_dbs=args.dbs,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - started
    _print_table(cases, judgement.records)
    _print_other_disagreements(cases, judgement.records, args.db_dir)
    print(f"\n{len(rows)} gold rows, {len(cases)} judged pairs, {args.dbs} databases each: "
          f"{elapsed:.1f}s ({1000 * elapsed / len(cases):.1f} ms per pair)")
    if args.show:
        _print_examples(cases, judgement.records, args.show)
    return 0


def _print_table(cases: list, records: list) -> None:
    print("| group | transform | n | exact match | test-suite match | real-DB match | false accept | TS differ, real same |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    totals = {"perturbation": [0, 0, 0]}
    names = list(dict.fromkeys((g, n) for g, n, _r, _s in cases))
    for group, name in names:
        picked = [rec for (g, n, _r, _s), rec in zip(cases, records) if (g, n) == (group, name)]
        k = len(picked)
        false_accept = sum(r.exec_match and not r.exec_match_real_db for r in picked)
        other = sum(not r.exec_match and r.exec_match_real_db for r in picked)
        if group in totals:
            totals[group][0] += k
            totals[group][1] += false_accept
            totals[group][2] += other
        print(f"| {group} | {name} | {k} | {_pct(sum(r.exact_match for r in picked), k)} | "
              f"{_pct(sum(r.exec_match for r in picked), k)} | {_pct(sum(bool(r.exec_match_real_db) for r in picked), k)} | "
              f"{false_accept} | {other} |")
    k, false_accept, other = totals["perturbation"]
    print(f"| perturbation | **all** | {k} | | | | {false_accept} ({_pct(false_accept, k)}) | {other} ({_pct(other, k)}) |")


def _print_other_disagreements(cases: list, records: list, db_dir: Path) -> None:
    """Why the real database returned the same rows where the test suite told the queries apart."""
    kinds = {"empty for both": 0, "only 0/NULL aggregates": 0, "the same non-empty rows": 0}
    databases = {}
    for (group, _name, row, _sql), rec in zip(cases, records):
        if group != "perturbation" or rec.exec_match or not rec.exec_match_real_db:
            continue
        if row["db_id"] not in databases:
            databases[row["db_id"]] = read_only_copy(db_dir / row["db_id"] / f"{row['db_id']}.sqlite")
        rows = run_query(databases[row["db_id"]], clean_sql(row["answer"]), timeout_s=2.0).rows or []
        if not rows:
            kinds["empty for both"] += 1
        elif all(value in (0, None) for r in rows for value in r):
            kinds["only 0/NULL aggregates"] += 1
        else:
            kinds["the same non-empty rows"] += 1
    print("\nTest suite differ, real database same, by the real result: "
          + ", ".join(f"{kind}: {count}" for kind, count in kinds.items()))


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def _print_examples(cases: list, records: list, limit: int) -> None:
    kinds = {
        "false accept (test suite: match, real DB: differ)": lambda r: r.exec_match and not r.exec_match_real_db,
        "test suite: differ, real DB: same": lambda r: not r.exec_match and r.exec_match_real_db,
    }
    for title, pick in kinds.items():
        print(f"\n### {title}")
        shown = 0
        for (group, name, row, sql), rec in zip(cases, records):
            if pick(rec) and shown < limit:
                shown += 1
                print(f"- [{group}: {name}] gold: `{row['answer']}`\n  pred: `{sql}`" + (f"\n  note: {rec.error or rec.gold_error}" if rec.error or rec.gold_error else ""))


if __name__ == "__main__":
    sys.exit(main())
