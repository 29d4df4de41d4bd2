"""The tables and columns a text-to-SQL row gives in its `context` (CREATE TABLE statements).

sql-create-context writes one CREATE TABLE per table a query touches, sometimes the same table
twice and sometimes the same column twice in different case (`Title VARCHAR, title VARCHAR`).
SQLite would reject both, and both name one thing (SQLite identifiers are case-insensitive), so
tables and columns are merged case-insensitively here. The schema is then rendered back as DDL
for the in-memory databases that validity and execution checks run on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from loratune.sql.safety import quiet_sqlglot


@dataclass
class Column:
    name: str
    declared_type: str = ""
    """The type as written (`VARCHAR`, `INTEGER`); empty when the context gave none."""


@dataclass
class Table:
    name: str
    columns: list[Column] = field(default_factory=list)

    def column(self, name: str) -> Column | None:
        low = name.lower()
        return next((c for c in self.columns if c.name.lower() == low), None)


@dataclass
class Schema:
    tables: list[Table] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        low = name.lower()
        return next((t for t in self.tables if t.name.lower() == low), None)

    def add_column(self, table: str, column: str, declared_type: str = "") -> None:
        """Add a column (and its table) unless present; names compare case-insensitively."""
        found = self.table(table)
        if found is None:
            found = Table(table)
            self.tables.append(found)
        if found.column(column) is None:
            found.columns.append(Column(column, declared_type))

    def has_column(self, name: str) -> bool:
        return any(t.column(name) is not None for t in self.tables)

    def copy(self) -> "Schema":
        return Schema([Table(t.name, [Column(c.name, c.declared_type) for c in t.columns]) for t in self.tables])

    def ddl(self, types: dict[tuple[str, str], str] | None = None) -> list[str]:
        """CREATE TABLE statements for SQLite. `types` maps (table, column) in lower case to the
        type to declare instead of the written one: the synthesizer uses it to give a column
        numeric affinity when the queries treat it as a number."""
        statements = []
        for table in self.tables:
            cols = []
            for col in table.columns:
                declared = col.declared_type
                if types is not None:
                    declared = types.get((table.name.lower(), col.name.lower()), declared)
                cols.append(f"{quote_identifier(col.name)} {declared}".rstrip())
            if not cols:  # a table with no known column still has to exist
                cols.append('"_rowid_placeholder"')
            statements.append(f"CREATE TABLE {quote_identifier(table.name)} ({', '.join(cols)})")
        return statements


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?")
_CREATE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([^\s(]+)\s*\((.*)\)", re.I | re.S)


def parse_schema(context: str) -> Schema:
    """Read CREATE TABLE statements with sqlglot (SQLite dialect). A statement sqlglot cannot
    parse falls back to a plain `CREATE TABLE name (col type, ...)` reading, so one odd
    statement does not lose the whole schema."""
    schema = Schema()
    for text in context.split(";"):
        if not text.strip():
            continue
        try:
            with quiet_sqlglot():
                statement = sqlglot.parse_one(text, read="sqlite")
        except (SqlglotError, RecursionError):
            statement = None
        if statement is None or isinstance(statement, exp.Command):
            _read_plainly(text, schema)
            continue
        if not isinstance(statement, exp.Create) or not isinstance(statement.this, exp.Schema):
            continue
        table = statement.this.this
        if not isinstance(table, exp.Table):
            continue
        if schema.table(table.name) is None:
            schema.tables.append(Table(table.name))
        for coldef in statement.this.expressions:
            if isinstance(coldef, exp.ColumnDef):
                kind = coldef.args.get("kind")
                schema.add_column(table.name, coldef.name, _type_name(kind.sql(dialect="sqlite") if kind else ""))
    return schema


def _read_plainly(text: str, schema: Schema) -> None:
    match = _CREATE.search(text)
    if match is None:
        return
    table = match.group(1).strip('"`[]')
    if schema.table(table) is None:
        schema.tables.append(Table(table))
    for part in match.group(2).split(","):
        words = part.split()
        if words:
            schema.add_column(table, words[0].strip('"`[]'), _type_name(" ".join(words[1:2])))


def _type_name(text: str) -> str:
    """The declared type if it reads as one (`VARCHAR`, `DECIMAL(5, 2)`), else none: the type
    goes back into DDL, so it must not carry stray syntax."""
    return text if _TYPE.fullmatch(text) else ""
