"""The model registry: versions, aliases and gate reports in one embedded SQLite database (WAL mode).

Layout: the database (default ``$GMPO_REGISTRY`` or ``~/.cache/gmpo/registry.db``) and, beside it, a
registry-owned store ``<db>.d/``: ``models/<name>/<uid>/`` holds each version's weights and tokenizer,
``reports/<name>/`` the gate reports (markdown + JSON).

**Copy, not reference.** :meth:`ModelRegistry.add` copies the model files into the store: a training run
keeps only its newest checkpoints (``train.keep_checkpoints``), so a referenced checkpoint could vanish under
a production alias. The copy goes to a temporary directory, is fsynced, its safetensors are hashed (sha256)
and checked against the source, then it is renamed to its final name, and only then is the version row
committed. A crash at any point leaves either no row (an orphan directory :meth:`check` reports and
:meth:`collect_garbage` deletes) or a row naming a complete, verified directory, never a row naming a
half-written one. Every alias therefore names a complete model.

**Transactions.** Every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front), so
concurrent writers from several processes serialize: two ``alias set`` calls never interleave, and a
promotion moves ``production`` and ``previous``, records the alias history and stores its gate report
atomically (:meth:`move_aliases` with an ``expect`` compare-and-swap). ``synchronous=FULL``: a committed
move survives a power loss.
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gmpo.runs.store import StoreError, copy_verified, fsync_path, model_files, sha256_file, weights_digest

PRODUCTION, PREVIOUS, CANDIDATE = "production", "previous", "candidate"
__all__ = ["AliasConflict", "ModelRegistry", "ModelVersion", "RegistryError", "default_path", "parse_ref"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,
  sha256 TEXT NOT NULL, files TEXT NOT NULL /*JSON {file: [bytes, sha256 or null]}*/, parent INTEGER,
  run_dir TEXT, config TEXT /*JSON*/, data_fingerprint TEXT, eval_results TEXT /*JSON*/, source TEXT,
  created REAL NOT NULL, created_by TEXT, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS aliases (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
  updated REAL NOT NULL, PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS alias_history (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
  alias TEXT NOT NULL, old_version INTEGER, new_version INTEGER, ts REAL NOT NULL, actor TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS reports (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
  candidate INTEGER NOT NULL, production INTEGER, passed INTEGER NOT NULL, applied INTEGER NOT NULL,
  ts REAL NOT NULL, context TEXT, json_path TEXT, md_path TEXT, summary TEXT);
CREATE TABLE IF NOT EXISTS cycles (name TEXT NOT NULL, batch TEXT NOT NULL, sha256 TEXT NOT NULL,
  state TEXT NOT NULL, base_version INTEGER, candidate INTEGER, report_id INTEGER, decision TEXT,
  message TEXT, details TEXT /*JSON*/, started REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (name, sha256));
"""


class RegistryError(ValueError):
    """A registry request cannot be served (unknown name/version/alias, bad input); the message says why."""


class AliasConflict(RegistryError):
    """An alias moved between reading it and the write that expected it (a concurrent promotion)."""


def crashpoint(name: str) -> None:
    """Test hook: SIGKILL this process at the named point when ``$GMPO_CRASH_AT`` equals it (kill -9 tests)."""
    if os.environ.get("GMPO_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def default_path() -> Path:
    """``$GMPO_REGISTRY`` or ``~/.cache/gmpo/registry.db``."""
    env = os.environ.get("GMPO_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gmpo" / "registry.db"


@dataclass
class ModelVersion:
    """One registered model version: ``path`` is a directory ``from_pretrained`` loads."""

    name: str
    version: int
    path: str
    sha256: str
    parent: int | None = None
    created: float = 0.0
    created_by: str = ""
    run_dir: str | None = None
    config: dict | None = None
    data_fingerprint: str | None = None
    eval_results: dict | None = None
    source: str | None = None
    files: dict = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``NAME@VERSION``."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (max 100, no '@')")
    return name


def parse_ref(ref: str) -> tuple[str, str | int]:
    """``"NAME@ALIAS"`` -> (name, alias); ``"NAME@3"`` or ``"NAME@v3"`` -> (name, 3); ``"NAME"`` -> (name, production)."""
    if not isinstance(ref, str) or not ref.strip():
        raise RegistryError(f"empty model reference {ref!r}: expected NAME, NAME@ALIAS or NAME@VERSION")
    name, _, what = ref.strip().partition("@")
    _check_name(name)
    if not what:
        return name, PRODUCTION
    if re.fullmatch(r"v?\d+", what):
        return name, int(what.lstrip("v"))
    return name, _check_name(what, "alias")


def _row_to_version(row: sqlite3.Row, aliases: list[str] | None = None) -> ModelVersion:
    loads = lambda s: json.loads(s) if s else None  # noqa: E731
    return ModelVersion(name=row["name"], version=row["version"], path=row["path"], sha256=row["sha256"],
                        parent=row["parent"], created=row["created"], created_by=row["created_by"] or "",
                        run_dir=row["run_dir"], config=loads(row["config"]), data_fingerprint=row["data_fingerprint"],
                        eval_results=loads(row["eval_results"]), source=row["source"],
                        files=loads(row["files"]) or {}, aliases=aliases or [])


class ModelRegistry:
    """Versions, aliases, alias history and gate reports of models (see the module docstring).

    ``path``: the SQLite file (default :func:`default_path`); created with its store on first use.
    Safe to use from several threads (one connection per thread) and processes (SQLite locking).
    """

    def __init__(self, path: str | os.PathLike | None = None, actor: str | None = None):
        self.path = Path(path).expanduser() if path else default_path()
        self.root = self.path.with_name(self.path.name + ".d")
        self.actor = actor or _whoami()
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.transaction() as con:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)

    # -- connections -------------------------------------------------------------------------------

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=60000")
            self._local.con = con
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` write transaction: committed on success, rolled back on any error."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- reading -----------------------------------------------------------------------------------

    def alias_version(self, name: str, alias: str = PRODUCTION) -> int | None:
        """The version `alias` names (None if unset): one indexed SELECT on a kept connection (~20 us),
        cheap enough for a serving process to poll."""
        row = self._con().execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
        return None if row is None else int(row[0])

    def query(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        """Rows of a read-only SQL statement (for tables other modules own here, e.g. ``cycles``)."""
        return self._con().execute(sql, tuple(args)).fetchall()

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of model `name`."""
        rows = self._con().execute("SELECT alias, version FROM aliases WHERE name=? ORDER BY alias", (name,))
        return {r["alias"]: r["version"] for r in rows}

    def names(self) -> list[str]:
        """Every registered model name."""
        return [r[0] for r in self._con().execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def get(self, name: str, version: int) -> ModelVersion:
        """Version `version` of `name` (RegistryError naming the known versions if absent)."""
        row = self._con().execute("SELECT * FROM versions WHERE name=? AND version=?", (name, int(version))).fetchone()
        if row is None:
            known = [v.version for v in self.versions(name)]
            if not known:
                raise RegistryError(f"no model named {name!r} in {self.path} (known: {', '.join(self.names()) or 'none'})")
            raise RegistryError(f"{name} has no version {version} (versions: {', '.join(map(str, known))})")
        return _row_to_version(row, [a for a, v in self.aliases(name).items() if v == int(version)])

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of `name`, oldest first, each with the aliases naming it."""
        al = self.aliases(name)
        rows = self._con().execute("SELECT * FROM versions WHERE name=? ORDER BY version", (name,)).fetchall()
        return [_row_to_version(r, [a for a, v in al.items() if v == r["version"]]) for r in rows]

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: ``NAME@ALIAS``, ``NAME@VERSION`` or ``NAME`` (= production)."""
        name, what = parse_ref(ref)
        if isinstance(what, int):
            return self.get(name, what)
        version = self.alias_version(name, what)
        if version is None:
            if not self.versions(name):
                raise RegistryError(f"no model named {name!r} in {self.path} (known: {', '.join(self.names()) or 'none'})")
            raise RegistryError(f"{name} has no alias {what!r} (aliases: {self.aliases(name) or 'none'})")
        return self.get(name, version)

    def history(self, name: str, alias: str | None = None) -> list[dict]:
        """Every alias move of `name` (optionally one alias), oldest first: id, alias, old/new version, ts, actor, reason."""
        q, args = "SELECT * FROM alias_history WHERE name=?", [name]
        if alias:
            q, args = q + " AND alias=?", args + [alias]
        return [dict(r) for r in self._con().execute(q + " ORDER BY id", args)]

    def reports(self, name: str) -> list[dict]:
        """Gate reports of `name`, oldest first (paths of their JSON and markdown files)."""
        return [dict(r) for r in self._con().execute("SELECT * FROM reports WHERE name=? ORDER BY id", (name,))]

    # -- writing -----------------------------------------------------------------------------------

    def add(self, path: str | os.PathLike, name: str, parent: int | None = None, run_dir: str | None = None,
            config: dict | None = None, data_fingerprint: str | None = None, eval_results: dict | None = None,
            alias: str | None = None) -> ModelVersion:
        """Copy the model directory `path` into the store, verify it, and record it as the next version.

        The copy is fsynced and its safetensors re-hashed against the source before the version row commits
        (see the module docstring); ``alias`` is set in the same transaction. Returns the new version.
        """
        _check_name(name)
        if alias:
            _check_name(alias, "alias")
        src = Path(path).expanduser().resolve()
        try:
            files = model_files(src)
        except StoreError as e:
            raise RegistryError(str(e)) from None
        if parent is not None:
            self.get(name, parent)
        dest_root = self.root / "models" / name
        dest_root.mkdir(parents=True, exist_ok=True)
        uid = uuid.uuid4().hex[:12]
        tmp = dest_root / f".tmp-{uid}"
        tmp.mkdir()
        try:
            manifest = copy_verified(files, tmp)
            crashpoint("add:copied")
            final = dest_root / uid
            os.rename(tmp, final)
            fsync_path(dest_root)
        except StoreError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryError(str(e)) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        crashpoint("add:renamed")
        try:
            with self.transaction() as con:
                row = con.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE name=?", (name,)).fetchone()
                version = int(row[0]) + 1
                con.execute(
                    "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (name, version, str(final), weights_digest(manifest), json.dumps(manifest), parent, run_dir,
                     json.dumps(config) if config is not None else None, data_fingerprint,
                     json.dumps(eval_results) if eval_results is not None else None, str(src), time.time(), self.actor))
                if alias:
                    self._move(con, name, alias, version, f"registered {name}@{version}")
                crashpoint("add:inserted")
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return self.get(name, version)

    def _move(self, con: sqlite3.Connection, name: str, alias: str, version: int | None, reason: str) -> None:
        """Inside a transaction: point `alias` at `version` (None deletes it) and record the move."""
        _check_name(alias, "alias")
        old = con.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
        old_v = None if old is None else int(old[0])
        if version is None:
            con.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))
        else:
            if con.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, int(version))).fetchone() is None:
                raise RegistryError(f"{name} has no version {version}: register it first (gmpo registry add)")
            con.execute("INSERT OR REPLACE INTO aliases VALUES (?,?,?,?)", (name, alias, int(version), time.time()))
        if old_v != version:
            con.execute("INSERT INTO alias_history (name, alias, old_version, new_version, ts, actor, reason) "
                        "VALUES (?,?,?,?,?,?,?)", (name, alias, old_v, version, time.time(), self.actor, reason))

    def set_alias(self, name: str, alias: str, version: int | None, reason: str = "alias set") -> None:
        """Point `alias` of `name` at `version` (None removes it), recorded in the alias history."""
        self.move_aliases(name, {alias: version}, reason)

    def move_aliases(self, name: str, moves: dict[str, int | None], reason: str,
                     expect: dict[str, int | None] | None = None,
                     also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Move several aliases in one transaction. ``expect``: {alias: version it must still name} (else
        :class:`AliasConflict`, nothing moves); ``also(con)`` runs in the same transaction (a report row, a
        continual-cycle record), so the moves and that record commit together or not at all."""
        _check_name(name)
        with self.transaction() as con:
            for alias, want in (expect or {}).items():
                row = con.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
                have = None if row is None else int(row[0])
                if have != want:
                    raise AliasConflict(f"{name}@{alias} is {have}, expected {want}: it moved meanwhile; re-run")
            for alias, version in moves.items():
                self._move(con, name, alias, version, reason)
            crashpoint("aliases:moved")
            if also is not None:
                also(con)

    def record_report(self, con: sqlite3.Connection, name: str, candidate: int, production: int | None,
                      passed: bool, applied: bool, context: str | None, json_path: str, md_path: str,
                      summary: str) -> int:
        """Inside a transaction: insert a gate-report row; returns its id."""
        cur = con.execute("INSERT INTO reports (name, candidate, production, passed, applied, ts, context, json_path, "
                          "md_path, summary) VALUES (?,?,?,?,?,?,?,?,?,?)",
                          (name, candidate, production, int(passed), int(applied), time.time(), context,
                           json_path, md_path, summary))
        return int(cur.lastrowid)

    def report_dir(self, name: str) -> Path:
        """Where the gate reports of `name` are written."""
        return self.root / "reports" / _check_name(name)

    # -- integrity ---------------------------------------------------------------------------------

    def verify(self, mv: ModelVersion, deep: bool = True) -> list[str]:
        """Problems with a version's files (empty when intact): missing files, sizes, and with `deep` sha256."""
        problems, d = [], Path(mv.path)
        if not (d / "config.json").is_file():
            return [f"{mv.ref}: {d} is missing or has no config.json"]
        for fname, (size, digest) in mv.files.items():
            p = d / fname
            if not p.is_file():
                problems.append(f"{mv.ref}: {fname} missing")
            elif p.stat().st_size != size:
                problems.append(f"{mv.ref}: {fname} is {p.stat().st_size} bytes, registered {size}")
            elif deep and digest and sha256_file(p) != digest:
                problems.append(f"{mv.ref}: {fname} sha256 differs from the registered one")
        return problems

    def check(self, deep: bool = True) -> dict[str, list]:
        """Consistency report: ``problems`` (aliases naming absent versions, damaged versions) and ``orphans``
        (store directories no version row names: leftovers of an interrupted add, safe to delete)."""
        con = self._con()
        problems: list[str] = []
        for r in con.execute("SELECT a.name, a.alias, a.version FROM aliases a LEFT JOIN versions v "
                             "ON a.name=v.name AND a.version=v.version WHERE v.version IS NULL"):
            problems.append(f"{r['name']}@{r['alias']} names version {r['version']}, which does not exist")
        known = set()
        for name in self.names():
            for mv in self.versions(name):
                known.add(Path(mv.path).resolve())
                problems += self.verify(mv, deep)
        orphans = []
        models = self.root / "models"
        if models.is_dir():
            for d in sorted(models.glob("*/*")):
                if d.is_dir() and d.resolve() not in known:
                    orphans.append(str(d))
        return {"problems": problems, "orphans": orphans}

    def collect_garbage(self, min_age_s: float = 600.0) -> list[str]:
        """Delete orphan store directories (see :meth:`check`) older than `min_age_s`; returns what was removed.
        The age guard spares an ``add`` in flight (its directory looks like an orphan until its row commits)."""
        now = time.time()
        removed = [d for d in self.check(deep=False)["orphans"] if now - os.stat(d).st_mtime >= min_age_s]
        for d in removed:
            shutil.rmtree(d, ignore_errors=True)
        return removed


def _whoami() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{os.uname().nodename}"

