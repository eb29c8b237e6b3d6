"""`mysql://user:password@host:port/database?server_id=N` parsing, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


class URLError(ValueError):
    pass


@dataclass(slots=True, frozen=True)
class MySQLURL:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = ""
    #: query-string options, e.g. {"server_id": "1001"}
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MySQLURL:
        parts = urlsplit(text)
        if parts.scheme not in ("mysql", "mariadb"):
            raise URLError(f"not a MySQL URL: {text!r} (expected mysql://user:password@host:port/)")
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise URLError(f"bad port in {text!r}: {exc}") from None
        options = tuple(
            (key, values[-1])
            for key, values in parse_qs(parts.query, keep_blank_values=True).items()
        )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username) if parts.username else "root",
            password=unquote(parts.password) if parts.password else "",
            database=unquote(parts.path.lstrip("/")),
            options=options,
        )

    def option(self, name: str, default: str | None = None) -> str | None:
        return dict(self.options).get(name, default)

    def redacted(self) -> str:
        """The URL for logs: the password never appears."""
        auth = f"{self.user}:***@" if self.password else f"{self.user}@"
        return f"mysql://{auth}{self.host}:{self.port}/{self.database}"
