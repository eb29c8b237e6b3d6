"""Which tables (or databases) a DDL statement names: just enough to route `ddl` events.

Theory of operation. This is not a DDL parser and tracks no schema: the binlog
names every row's columns itself (binlog_row_metadata=FULL), so nothing here can
put decoding out of step. A small tokenizer splits the statement into words,
quoted identifiers, strings and punctuation (comments dropped, MySQL's
executable `/*! ... */` comments kept as code), and a few token patterns pick
out the object names:

    CREATE [OR REPLACE] TABLE [IF NOT EXISTS] t ...       -> t
    CREATE [UNIQUE|FULLTEXT|SPATIAL] INDEX i ... ON t     -> t
    CREATE/ALTER/DROP VIEW|SEQUENCE ...                   -> each one named
    ALTER [ONLINE] [IGNORE] TABLE [IF EXISTS] t ...       -> t, plus any RENAME [TO] u
                                                             and EXCHANGE ... WITH TABLE u
    DROP TABLE [IF EXISTS] a, b ...                       -> a, b
    DROP INDEX i ON t                                     -> t
    RENAME TABLE a TO b, c TO d                           -> a, b, c, d
    TRUNCATE [TABLE] t                                    -> t
    CREATE/ALTER/DROP DATABASE|SCHEMA d                   -> database d, no table
    CREATE/ALTER/DROP PROCEDURE|FUNCTION|TRIGGER|EVENT|PACKAGE [d.]x
                                                          -> database d (or the
                                                             session's), no table

Temporary tables are left out (no other session can see them), and so is
everything else (users, grants, ANALYZE, ...): `targets()` returns [] for them.
Unqualified names belong to the statement's default database, which the binlog
records with each statement.
"""

from __future__ import annotations

import re

#: (database, table or None for a database-level statement)
Target = tuple[str, str | None]

_TOKEN = re.compile(
    r"""
      (?P<skip>\s+|--(?:\s[^\n]*|$)|\#[^\n]*|/\*(?!M?!).*?(?:\*/|$)|/\*M?!\d*|\*/)
    | (?P<bq>`(?:[^`]|``)*`)
    | (?P<dq>"(?:[^"\\]|\\.|"")*")
    | (?P<sq>'(?:[^'\\]|\\.|'')*')
    | (?P<word>[0-9A-Za-z_$\u0080-\U0010ffff]+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# A token: (kind, text) where kind is "w" (a bare word, as written), "id" (a quoted
# identifier, unquoted), "s" (a string literal) or "p" (punctuation).
Token = tuple[str, str]


def tokenize(sql: str) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind == "skip":
            continue
        if kind == "word":
            tokens.append(("w", text))
        elif kind == "bq":
            tokens.append(("id", text[1:-1].replace("``", "`")))
        elif kind == "dq":  # an identifier under ANSI_QUOTES; only read where a name must be
            tokens.append(("id", text[1:-1].replace('""', '"')))
        elif kind == "sq":
            tokens.append(("s", text))
        else:
            tokens.append(("p", text))
    return tokens


_DATABASE_OBJECTS = frozenset({"PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"})
_RELATIONS = frozenset({"VIEW", "SEQUENCE"})
_OBJECTS = (
    frozenset({"TABLE", "INDEX", "DATABASE", "SCHEMA", "USER", "ROLE", "SERVER", "TABLESPACE"})
    | _DATABASE_OBJECTS
    | _RELATIONS
)
#: at most this many words (OR REPLACE, DEFINER=`u`@`h`, ALGORITHM=..., UNIQUE, ONLINE, ...)
#: stand between CREATE/ALTER/DROP and the object keyword
_PREFIX_LIMIT = 16
#: ALTER TABLE ... RENAME <these> renames a part, not the table
_NOT_RENAMED = frozenset({"COLUMN", "INDEX", "KEY", "CONSTRAINT", "PARTITION", "PERIOD"})
#: ALTER DATABASE <these>: no name given, the default database is meant
_DB_OPTIONS = frozenset(
    {"DEFAULT", "CHARACTER", "CHARSET", "COLLATE", "COMMENT", "READ", "ENCRYPTION", "UPGRADE"}
)


class _Cursor:
    __slots__ = ("i", "tokens")

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self, ahead: int = 0) -> Token | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def keyword(self, ahead: int = 0) -> str | None:
        """The upper-cased bare word `ahead` tokens on, if it is one."""
        tok = self.peek(ahead)
        return tok[1].upper() if tok is not None and tok[0] == "w" else None

    def word(self, *words: str) -> bool:
        """Consume the bare words `words` if they come next."""
        if all(self.keyword(k) == w for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def punct(self, text: str) -> bool:
        if self.peek() == ("p", text):
            self.i += 1
            return True
        return False

    def ident(self) -> str | None:
        tok = self.peek()
        if tok is None or tok[0] not in ("w", "id"):
            return None
        self.i += 1
        return tok[1]

    def name(self, default_db: str) -> tuple[str, str] | None:
        """[db.]name -> (db, name)."""
        first = self.ident()
        if first is None:
            return None
        if self.peek() == ("p", "."):
            self.i += 1
            second = self.ident()
            if second is not None:
                return first, second
        return default_db, first

    def skip_wait(self) -> None:
        """MariaDB's `WAIT n` / `NOWAIT` after a table name."""
        if not self.word("NOWAIT") and self.keyword() == "WAIT":
            self.i += 2


def targets(sql: str, database: str) -> list[Target]:
    """The tables (or databases) `sql` changes, in statement order, without repeats.

    `database` is the statement's default database (the binlog's `db` field).
    """
    cur = _Cursor(tokenize(sql))
    found: list[Target] = []
    verb = cur.keyword()
    cur.i += 1
    if verb in ("CREATE", "ALTER", "DROP"):
        _object_statement(cur, verb, database, found)
    elif verb == "RENAME":
        if cur.word("TABLE") or cur.word("TABLES"):
            _rename_tables(cur, database, found)
    elif verb == "TRUNCATE":
        cur.word("TABLE")
        name = cur.name(database)
        if name is not None:
            found.append(name)
    return [t for t in dict.fromkeys(found) if t[0]]


def _object_statement(cur: _Cursor, verb: str, database: str, found: list[Target]) -> None:
    temporary = False
    for _ in range(_PREFIX_LIMIT):
        word = cur.keyword()
        if word in _OBJECTS:
            break
        if cur.peek() is None:
            return
        temporary = temporary or word == "TEMPORARY"
        cur.i += 1
    else:
        return
    kind = cur.keyword()
    cur.i += 1
    if kind == "TABLE":
        if temporary:
            return
        _skip_if_exists(cur)
        if verb == "DROP":
            _name_list(cur, database, found)
            return
        name = cur.name(database)
        if name is not None:
            found.append(name)
            if verb == "ALTER":
                _alter_table_extras(cur, database, found)
    elif kind == "INDEX":  # CREATE ... INDEX i [USING t] ON tbl / DROP INDEX i ON tbl
        while (tok := cur.peek()) is not None:
            cur.i += 1
            if tok[0] == "w" and tok[1].upper() == "ON":
                name = cur.name(database)
                if name is not None:
                    found.append(name)
                return
    elif kind in ("DATABASE", "SCHEMA"):
        _skip_if_exists(cur)
        if verb == "ALTER" and (cur.peek() is None or cur.keyword() in _DB_OPTIONS):
            found.append((database, None))
            return
        db = cur.ident()
        if db is not None:
            found.append((db, None))
    elif kind in _RELATIONS:
        _skip_if_exists(cur)
        _name_list(cur, database, found)
    elif kind in _DATABASE_OBJECTS:
        if kind == "PACKAGE":
            cur.word("BODY")
        _skip_if_exists(cur)
        name = cur.name(database)
        if name is not None:
            found.append((name[0], None))


def _skip_if_exists(cur: _Cursor) -> None:
    if not cur.word("IF", "NOT", "EXISTS"):
        cur.word("IF", "EXISTS")


def _name_list(cur: _Cursor, database: str, found: list[Target]) -> None:
    while True:
        name = cur.name(database)
        if name is None:
            return
        found.append(name)
        cur.skip_wait()
        if not cur.punct(","):
            return


def _rename_tables(cur: _Cursor, database: str, found: list[Target]) -> None:
    _skip_if_exists(cur)
    while True:
        old = cur.name(database)
        if old is None:
            return
        cur.skip_wait()
        if not cur.word("TO"):
            return
        new = cur.name(database)
        if new is None:
            return
        found += (old, new)
        if not cur.punct(","):
            return


def _alter_table_extras(cur: _Cursor, database: str, found: list[Target]) -> None:
    """ALTER TABLE t ... RENAME [TO|AS] u, and EXCHANGE PARTITION p WITH TABLE u."""
    depth = 0
    while (tok := cur.peek()) is not None:
        cur.i += 1
        if tok[0] == "p":
            depth += {"(": 1, ")": -1}.get(tok[1], 0)
            continue
        if depth or tok[0] != "w":
            continue
        word = tok[1].upper()
        if word == "RENAME":
            nxt = cur.keyword()
            if cur.peek() is None or nxt in _NOT_RENAMED:
                continue
            if not cur.word("TO"):
                cur.word("AS")
            name = cur.name(database)
            if name is not None:
                found.append(name)
        elif word == "WITH" and cur.word("TABLE"):
            name = cur.name(database)
            if name is not None:
                found.append(name)
