"""What SIGHUP changes in a running daemon, and what needs a restart.

On SIGHUP the daemon builds its settings again from the same sources (the
command line it was started with, the TIDINGS_* environment it was started
with, the TOML file read anew) and applies what can change live:

- logging (`log_level`, `log_format`);
- connection limits and timeouts (`max_clients`, `max_clients_per_ip`,
  `idle_timeout`, `request_timeout`), at once for the whole process;
- `max_subscriptions`, `output_limit`, `origins`, `allow_publish`: for
  connections made from then on (a connected client keeps what it was given);
- the auth secret (a rotation: tokens signed with the old secret stop being
  accepted from then on; connections already authenticated keep their grant until
  it expires) and `auth_max_failures`;
- the TLS certificate and key (tidings.tls, re-read even if their paths did not
  change).

Every other setting (the source, the listeners' addresses, the state directory,
history sizes, ...) needs a restart: a changed one is logged as such and the
running value kept. A config file that no longer parses changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from tidings.config import Settings, auth_secret
from tidings.logs import setup_logging
from tidings.wire.access import Authority
from tidings.wire.limits import Admission, Limits
from tidings.wire.origins import Origins

__all__ = ["LIVE", "apply"]

log = logging.getLogger("tidings.daemon")

#: settings a SIGHUP applies (the TLS files are re-read whether or not they changed)
LIVE = frozenset(
    {
        "log_level",
        "log_format",
        "max_clients",
        "max_clients_per_ip",
        "idle_timeout",
        "request_timeout",
        "max_subscriptions",
        "output_limit",
        "origins",
        "allow_publish",
        "auth_secret",
        "auth_secret_file",
        "auth_max_failures",
        "tls_cert",
        "tls_key",
    }
)


class Service(Protocol):
    settings: Any


def _update(service: Service | None, **changes: Any) -> None:
    """New settings for a service's future connections (its settings are frozen)."""
    if service is None:
        return
    known = {f.name for f in dataclasses.fields(service.settings)}
    service.settings = dataclasses.replace(
        service.settings, **{k: v for k, v in changes.items() if k in known}
    )


def apply(
    old: Settings,
    new: Settings,
    *,
    admission: Admission,
    authority: Authority | None,
    services: tuple[Service | None, ...],
    room: int,
) -> Settings:
    """Apply `new` over `old` where that can be done live; return the settings in force."""
    changed = [f.name for f in dataclasses.fields(Settings) if getattr(old, f.name) !=
               getattr(new, f.name)]  # fmt: skip
    kept = [name for name in changed if name not in LIVE]
    for name in kept:
        log.warning("reload: %s changed, which needs a restart; still %r", name,
                    getattr(old, name))  # fmt: skip
    if bool(new.tls_cert) != bool(old.tls_cert):
        log.warning("reload: turning TLS on or off needs a restart")
        kept += ["tls_cert", "tls_key"]
    secret = auth_secret(new)
    if (secret is None) != (authority is None):
        log.warning("reload: turning authentication on or off needs a restart")
        kept += ["auth_secret", "auth_secret_file"]
    elif authority is not None and secret is not None and secret != authority.secret:
        authority.secret = secret
        log.warning("reload: new auth secret: tokens signed with the old one are refused "
                    "from now on")  # fmt: skip
    if authority is not None:
        authority.throttle.max_failures = new.auth_max_failures
    admission.limits = Limits(
        max_clients=new.max_clients,
        max_clients_per_ip=new.max_clients_per_ip,
        idle_timeout=new.idle_timeout,
        request_timeout=new.request_timeout,
    )
    admission.max_clients = new.max_clients or room
    for service in services:
        _update(
            service,
            max_subscriptions=new.max_subscriptions,
            output_limit=new.output_limit,
            origins=Origins.parse(new.origins),
            allow_publish=new.allow_publish,
        )
    if (new.log_level, new.log_format) != (old.log_level, old.log_format):
        setup_logging(new.log_level, new.log_format)
    effective = dataclasses.replace(new, **{name: getattr(old, name) for name in kept})
    applied = [name for name in changed if name not in kept]
    log.info("reload: %s", "applied " + ", ".join(applied) if applied else "no setting changed")
    return effective
