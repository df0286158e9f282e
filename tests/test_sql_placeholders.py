"""jobcore's SQLite statements bind their values by position with plain `?` marks only:
Python 3.12 warns when numbered (`?1`) or named (`:name`) marks are given a sequence,
and Python 3.14 refuses them (a job's log lines went through such a statement)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import warnings

import jobcore.repository
from jobcore import Job
from jobcore.records import record_for
from jobcore.repository.sqlite import SQLiteRepository

NOW = 1_700_000_000.0
_LITERAL = re.compile(r"'(?:[^']|'')*'")  # SQL string literals: what they hold binds nothing
_NOT_QMARK = re.compile(r"\?\d|(?<![:\w]):[A-Za-z_]|@[A-Za-z_]|\$[A-Za-z_]")
_STATEMENT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|REPLACE)\b")


def _statements() -> dict[str, str]:
    """Every statement among the text constants of the SQLite backend's modules, by
    module and name (not values such as a JSON text a statement compares with)."""
    found = {}
    for info in pkgutil.iter_modules(jobcore.repository.__path__):
        if info.name.startswith("sqlite"):
            module = importlib.import_module(f"jobcore.repository.{info.name}")
            for name, value in vars(module).items():
                if isinstance(value, str) and name.isupper() and _STATEMENT.search(value):
                    found[f"{info.name}.{name}"] = value
    return found


def test_every_statement_binds_by_plain_question_marks() -> None:
    # given the SQLite backend's statements
    statements = _statements()
    assert "sqlite_sql.INSERT_LOG_IF_STORED" in statements
    # then none holds a numbered or named mark outside its string literals
    wrong = {name: _NOT_QMARK.findall(_LITERAL.sub("''", text)) for name, text in statements.items()}
    assert {name: marks for name, marks in wrong.items() if marks} == {}


def test_log_lines_are_stored_without_a_warning_from_sqlite3(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # given a stored job
    repo = SQLiteRepository(str(tmp_path / "jobs.db"))
    record = record_for(Job(function_name="task"), NOW)
    repo.insert([record], NOW)
    # when lines are added one at a time and several at once, any warning an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repo.add_log(record.id, "info", "one", NOW + 1)
        repo.add_logs(record.id, [(NOW + 2, "warning", "two"), (NOW + 3, "error", "three")])
        repo.add_log("no-such-job", "info", "lost", NOW + 4)
    # then each is stored in its own fields, and none for a job not stored
    assert repo.logs(record.id) == [(NOW + 1, "info", "one"), (NOW + 2, "warning", "two"),
                                    (NOW + 3, "error", "three")]
    assert repo.logs("no-such-job") == []
    repo.close()
