"""Opening a PostgreSQL schema: a current one is opened without DDL and without locks, so
roles with only the privileges they use open it and open writes never hold it up; a
missing or older one is created or migrated by a role that may, and a role that may not
is told who must (against the server of `pg_fixtures`, with roles made for each test).
"""

from __future__ import annotations

import secrets
from typing import Callable, Iterator

import pytest

import pg_fixtures
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import Schema, psycopg
from jobcore.errors import RepositoryError
from jobcore.testing.contract import NOW, make_record

try:
    from psycopg import conninfo
    from jobcore.postgres import PostgresRepository
    from jobcore.postgres.schema import SCHEMA_VERSION
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS

TABLES = ("jobs", "job_deps", "job_logs", "jobcore_workers", "jobcore_meta")


class Role:
    """A login role of the test server with only the privileges a test grants it."""

    def __init__(self, server: str) -> None:
        self.name = f"r_{secrets.token_hex(8)}"
        password = secrets.token_hex(16)  # works whether the server trusts loopback or not
        self.dsn = conninfo.make_conninfo(server, user=self.name, password=password)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.name} LOGIN PASSWORD '{password}'")
            # what the tests rely on: a role may not create schemas unless granted it
            may_create = conn.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE')",
                                      (self.name,)).fetchone()
        assert may_create == (False,), "PUBLIC may create schemas in the test database: revoke it"

    def repository(self, schema: Schema) -> "PostgresRepository":
        return PostgresRepository(self.dsn, schema=schema.name, timeout=10)


@pytest.fixture
def make_role(schema: Schema) -> Iterator[Callable[[], Role]]:
    """Makes roles; drops them, and whatever they own, afterwards (before `schema` drops
    the test's schema, which depends on this fixture's teardown running first)."""
    roles: list[Role] = []

    def make() -> Role:
        roles.append(Role(schema.server))
        return roles[-1]

    yield make
    with psycopg.connect(schema.server, autocommit=True) as conn:
        for role in roles:
            conn.execute(f"DROP OWNED BY {role.name} CASCADE")
        for role in roles:
            conn.execute(f"DROP ROLE {role.name}")


def _grant_use(schema: Schema, role: Role) -> None:
    """What an application role needs, and no more: USAGE on the schema, DML on its tables."""
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema.name}" TO {role.name}')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema.name}"'
                     f' TO {role.name}')


def _check_it_works(repository: "PostgresRepository") -> None:
    record = make_record()
    repository.insert([record], NOW)
    assert repository.claim(record.id, "w1", NOW, NOW + 30) is not None
    repository.register_worker("w1", "host-a", 101, NOW, lease_timeout=30.0)
    assert repository.get(record.id).worker_id == "w1"  # type: ignore[union-attr]


def _version(schema: Schema) -> tuple[str, ...]:
    with psycopg.connect(schema.server) as conn:
        return conn.execute(f"SELECT value FROM \"{schema.name}\".jobcore_meta"
                            " WHERE key = 'schema_version'").fetchone()  # type: ignore[return-value]


def _refused(role: Role, schema: Schema) -> str:
    """The message of the RepositoryError `role` gets opening `schema`."""
    with pytest.raises(RepositoryError) as refused:
        role.repository(schema)
    return str(refused.value)


def test_a_role_with_only_usage_and_dml_opens_a_current_schema(repo: "PostgresRepository", schema: Schema,
                                                               make_role: Callable[[], Role]) -> None:
    # given a current schema an administrator made, and an application role that may only
    # use it (it may neither create schemas nor create anything in this one)
    app = make_role()
    _grant_use(schema, app)
    # when the application role opens it, then it opens and works
    opened = app.repository(schema)
    try:
        _check_it_works(opened)
    finally:
        opened.close()


def test_a_role_owning_a_schema_made_for_it_creates_the_tables_there(schema: Schema,
                                                                     make_role: Callable[[], Role]) -> None:
    # given the setup docs/postgres.md recommends for a role that may not create schemas:
    # the schema created for it (it owns it, but has no CREATE on the database)
    app = make_role()
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema.name}" AUTHORIZATION {app.name}')
    # when it opens the schema, then the tables are created, at this version, and work;
    # and a second open (of a current schema) works too
    for _ in range(2):
        opened = app.repository(schema)
        try:
            _check_it_works(opened)
        finally:
            opened.close()
    with psycopg.connect(schema.server) as conn:
        owners = dict(conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = %s",
                                   (schema.name,)).fetchall())
    assert owners == {table: app.name for table in TABLES}
    assert _version(schema) == (str(SCHEMA_VERSION),)


def test_a_role_that_must_migrate_but_may_not_is_told_to_have_the_owner_open_it_once(
        schema: Schema, make_role: Callable[[], Role]) -> None:
    # given a schema owned, with its tables, by a migration role, left at version 4 (no
    # dead-letter index), and an application role that may only use it
    owner, app = make_role(), make_role()
    PostgresRepository(schema.server, schema=schema.name).close()
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'ALTER SCHEMA "{schema.name}" OWNER TO {owner.name}')
        for table in TABLES:
            conn.execute(f'ALTER TABLE "{schema.name}".{table} OWNER TO {owner.name}')
    _grant_use(schema, app)
    schema.back_to_version_4(owner.dsn)
    # when the application role opens it, then it is refused, saying what must happen
    message = _refused(app, schema)
    assert f"schema {schema.name!r} is at version 4 and this jobcore needs version {SCHEMA_VERSION}" in message
    assert f"role {app.name!r} may not migrate it" in message
    assert "the owner of the schema and its tables must open it once with this jobcore" in message
    assert _version(schema) == ("4",)  # nothing of the attempt was kept
    # and once the owner has opened it (migrating it), the application role opens it
    owner.repository(schema).close()
    assert _version(schema) == (str(SCHEMA_VERSION),)
    opened = app.repository(schema)
    try:
        _check_it_works(opened)
    finally:
        opened.close()


def test_a_role_that_may_not_create_the_missing_schema_is_told_how_to_create_it(
        schema: Schema, make_role: Callable[[], Role]) -> None:
    app = make_role()
    message = _refused(app, schema)
    assert f"schema {schema.name!r} does not exist and role {app.name!r} may not create it" in message
    assert f'CREATE SCHEMA "{schema.name}" AUTHORIZATION {app.name}' in message


def test_a_role_that_may_not_create_the_tables_in_an_empty_schema_is_told_who_may(
        schema: Schema, make_role: Callable[[], Role]) -> None:
    app = make_role()
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema.name}"')
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema.name}" TO {app.name}')
    message = _refused(app, schema)
    assert f"schema {schema.name!r} has no jobcore tables (version {SCHEMA_VERSION})" in message
    assert f"role {app.name!r} may not create them there; the schema's owner must open it once" in message


def test_opening_a_current_schema_never_waits_for_an_open_write_to_jobs(repo: "PostgresRepository",
                                                                        schema: Schema) -> None:
    # given a current schema, and a transaction elsewhere holding an uncommitted write to
    # one job (a long enqueue_many, another application's update)
    record = make_record()
    repo.insert([record], NOW)
    with psycopg.connect(schema.server) as writer:
        writer.execute(f'UPDATE "{schema.name}".jobs SET priority = priority WHERE id = %s', (record.id,))
        # when another repository opens it, with connections that give up on any lock
        # they cannot have at once (CREATE INDEX IF NOT EXISTS takes a SHARE lock on
        # jobs, which waits for that write: every writer would then queue behind it)
        impatient = conninfo.make_conninfo(schema.server, options="-c lock_timeout=100")
        opened = PostgresRepository(impatient, schema=schema.name)
        # then it opened without waiting for a lock, and works alongside the write
        try:
            other = make_record()
            opened.insert([other], NOW)
            assert opened.get(other.id) is not None
        finally:
            opened.close()
        writer.rollback()


def test_a_schema_behind_is_migrated_under_an_open_write_once_the_write_ends(repo: "PostgresRepository",
                                                                             schema: Schema) -> None:
    # given a version 4 schema (no dead-letter index) while a write to jobs is open
    record = make_record()
    repo.insert([record], NOW)
    schema.back_to_version_4()
    with psycopg.connect(schema.server) as writer:
        writer.execute(f'UPDATE "{schema.name}".jobs SET priority = priority WHERE id = %s', (record.id,))
        # when an impatient repository opens it, then migrating it needs the lock on jobs
        # the write holds up: the open fails and leaves the schema as it was
        impatient = conninfo.make_conninfo(schema.server, options="-c lock_timeout=100")
        with pytest.raises(RepositoryError, match="LockNotAvailable"):
            PostgresRepository(impatient, schema=schema.name)
        assert _version(schema) == ("4",)
        writer.rollback()
    # and once the write ended, the open migrates it as before
    PostgresRepository(impatient, schema=schema.name).close()
    assert _version(schema) == (str(SCHEMA_VERSION),)


def _relations(schema: Schema) -> set[str]:
    """The names of the tables and indexes in the schema."""
    with psycopg.connect(schema.server) as conn:
        return {name for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'i')", (schema.name,)).fetchall()}


def test_a_current_schema_missing_a_table_or_an_index_dropped_by_hand_gets_them_again(
        repo: "PostgresRepository", schema: Schema) -> None:
    # given a current schema whose jobs table (with its indexes) and logs index someone
    # dropped by hand: without them every call fails, or every read of logs crawls
    whole = _relations(schema)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{schema.name}".jobs CASCADE')
        conn.execute(f'DROP INDEX "{schema.name}".job_logs_job')
    assert "jobs" not in _relations(schema) and "job_logs_job" not in _relations(schema)
    # when it is opened again, then every table and index is there again, and it works
    opened = schema.repository()
    try:
        assert _relations(schema) == whole
        _check_it_works(opened)
    finally:
        opened.close()
    assert _version(schema) == (str(SCHEMA_VERSION),)


def test_a_role_that_must_make_a_dropped_index_again_but_may_not_is_told_who_must(
        repo: "PostgresRepository", schema: Schema, make_role: Callable[[], Role]) -> None:
    # given a current schema missing an index, and an application role that may only use it
    app = make_role()
    _grant_use(schema, app)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'DROP INDEX "{schema.name}".jobs_owner')
    # when the application role opens it, then it is refused, naming what is missing
    message = _refused(app, schema)
    assert f"schema {schema.name!r} is missing jobs_owner" in message
    assert f"role {app.name!r} may not create them" in message
    assert "jobs_owner" not in _relations(schema)
    # and once a role that may has opened it, the index is back and the role opens it
    schema.repository().close()
    assert "jobs_owner" in _relations(schema)
    opened = app.repository(schema)
    try:
        _check_it_works(opened)
    finally:
        opened.close()


def test_a_schema_version_that_is_not_a_number_is_refused_as_corrupt(repo: "PostgresRepository",
                                                                     schema: Schema) -> None:
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema.name}\".jobcore_meta SET value = 'six'")
    with pytest.raises(RepositoryError) as refused:
        schema.repository()
    assert (f"schema {schema.name!r}: schema version 'six' is not a number: the schema is corrupt"
            f" or not jobcore's") in str(refused.value)
    assert _version(schema) == ("six",)  # left as it was


@pytest.mark.parametrize("stored", ["0", "-1"])
def test_a_schema_version_below_the_first_is_refused_as_corrupt(repo: "PostgresRepository", schema: Schema,
                                                                stored: str) -> None:
    # (a KeyError looking for its migration, as on SQLite)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema.name}\".jobcore_meta SET value = %s", (stored,))
    with pytest.raises(RepositoryError) as refused:
        schema.repository()
    assert (f"schema {schema.name!r}: schema version {stored!r} is not one jobcore ever wrote: the schema is"
            f" corrupt or not jobcore's") in str(refused.value)
    assert _version(schema) == (stored,)  # left as it was
