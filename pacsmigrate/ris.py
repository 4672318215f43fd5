"""Paths as the RIS writes them (`--map-prefix`), and SQL that points its rows at objects."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError

DIALECTS = ("standard", "mysql")


def _is_unc(text: str) -> bool:
    """A NEW prefix with backslashes is a Windows path: the rest of the path follows it."""
    return "\\" in text


@dataclass(frozen=True)
class PrefixMap:
    """`--map-prefix OLD=NEW` rules: the longest OLD that is a prefix of a path wins.

    OLD matches whole path components only (`/mnt/pacs/2015` does not match
    `/mnt/pacs/20150/...`). When NEW contains a backslash (`\\\\nas01\\pacs\\2015`, `D:\\PACS`)
    the `/` in the rest of the path become `\\`. A path no OLD matches is left unchanged.
    Rules work on the display text of a path (see paths.display), so a name that is not
    UTF-8 keeps its `\\xNN` escapes.
    """

    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> PrefixMap:
        """Rules from `OLD=NEW` strings (split at the first `=`); ConfigError if malformed."""
        rules: dict[str, str] = {}
        for spec in specs:
            old, sep, new = spec.partition("=")
            if not sep or not old:
                raise ConfigError(f"--map-prefix {spec!r}: expected OLD=NEW, e.g. "
                                  r"'/mnt/pacs/2015=\\nas01\pacs\2015'")
            if not old.startswith("/"):
                raise ConfigError(f"--map-prefix {spec!r}: OLD must be an absolute path as it "
                                  "was migrated (starting with /)")
            old = old.rstrip("/") or "/"
            if old in rules and rules[old] != new:
                raise ConfigError(f"--map-prefix gives two NEW prefixes for {old!r}")
            rules[old] = new
        return cls(tuple(sorted(rules.items(), key=lambda r: len(r[0]), reverse=True)))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, path: str) -> str:
        """The path as the RIS writes it (unchanged when no rule matches)."""
        for old, new in self.rules:
            rest = _after_prefix(path, old, sep="/")
            if rest is not None:
                return _join(new, rest, from_sep="/", to_sep="\\" if _is_unc(new) else "/")
        return path

    def reverse(self, path: str) -> str | None:
        """The migrated path of a path as the RIS writes it, or None if no NEW matches.

        The longest NEW wins; a Windows-style NEW matches regardless of case, as Windows does.
        Every `\\` after a Windows-style NEW becomes `/`, so a migrated name that itself
        contained a backslash (or a `\\xNN` escape) cannot be recovered this way.
        """
        for old, new in sorted(self.rules, key=lambda r: len(r[1]), reverse=True):
            unc = _is_unc(new)
            sep = "\\" if unc else "/"
            rest = _after_prefix(path, new, sep=sep, fold_case=unc)
            if rest is not None:
                return _join(old, rest, from_sep=sep, to_sep="/")
        return None


def _after_prefix(path: str, prefix: str, *, sep: str, fold_case: bool = False) -> str | None:
    """What follows `prefix` in `path` if it ends at a component boundary, else None."""
    stem = prefix.rstrip("/\\")
    if not stem:  # the root: every absolute path
        return path if path.startswith(prefix) else None
    head = path[:len(stem)]
    if (head.casefold() != stem.casefold()) if fold_case else (head != stem):
        return None
    rest = path[len(stem):]
    return rest if rest == "" or rest.startswith(sep) else None


def _join(prefix: str, rest: str, *, from_sep: str, to_sep: str) -> str:
    return prefix.rstrip("/\\") + rest.replace(from_sep, to_sep)


# -- SQL ----------------------------------------------------------------------------------
_PLAIN = r"[A-Za-z_][A-Za-z0-9_$]*"
_QUOTED = {"standard": r'"[^"\x00]+"', "mysql": r"`[^`\x00]+`"}


def sql_identifier(name: str, *, dialect: str = "standard", dotted: bool = False) -> str:
    """`name` checked to be one SQL identifier (or schema.table when dotted); ConfigError if not.

    Plain names (letters, digits, `_`, `$`, not starting with a digit) are written as given,
    so the database folds their case as it always does. Anything else must come already
    quoted: `"Order Items"` (standard SQL) or `` `Order Items` `` (MySQL).
    """
    part = f"(?:{_PLAIN}|{_QUOTED[_dialect(dialect)]})"
    pattern = rf"{part}(?:\.{part})?" if dotted else part
    if not re.fullmatch(pattern, name):
        raise ConfigError(f"not a valid SQL identifier: {name!r} (use letters, digits and _, "
                          'or quote it: "My Table")')
    return name


def sql_string(text: str, *, dialect: str = "standard") -> str:
    """A SQL string literal of `text`, exact for any path.

    Standard SQL (SQLite; PostgreSQL with standard_conforming_strings, its default): single
    quotes are doubled and backslashes are literal. MySQL/MariaDB treat backslash as
    an escape unless the session has NO_BACKSLASH_ESCAPES, so dialect "mysql" doubles them
    too. Non-ASCII characters stay as they are: write the script as UTF-8 (for MySQL, a
    utf8mb4 connection).
    """
    if "\x00" in text:
        raise ValueError("a SQL string cannot carry a NUL character")
    if _dialect(dialect) == "mysql":
        text = text.replace("\\", "\\\\")
    return "'" + text.replace("'", "''") + "'"


def _dialect(dialect: str) -> str:
    if dialect not in DIALECTS:
        raise ConfigError(f"unknown SQL dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    return dialect


@dataclass(frozen=True)
class SqlTarget:
    """The RIS table the `sql` export updates: rows whose path column equals a source path
    get the object address in the URI column."""

    table: str = "images"
    path_column: str = "file_path"
    uri_column: str = "object_uri"
    dialect: str = "standard"

    def __post_init__(self) -> None:
        _dialect(self.dialect)
        sql_identifier(self.table, dialect=self.dialect, dotted=True)
        sql_identifier(self.path_column, dialect=self.dialect)
        sql_identifier(self.uri_column, dialect=self.dialect)

    def update(self, *, path: str, uri: str) -> str:
        """One statement: `UPDATE table SET uri_column = 'uri' WHERE path_column = 'path';`"""
        return (f"UPDATE {self.table} SET {self.uri_column} = "
                f"{sql_string(uri, dialect=self.dialect)} WHERE {self.path_column} = "
                f"{sql_string(path, dialect=self.dialect)};")
