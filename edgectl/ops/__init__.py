"""The operator's commands (`edgectl status`, `domains`, `nodes`, `links`, `certs`, `config`):
they talk to the control service's API over HTTPS with the platform's token, never to the store,
so they work from any host that can reach the service (docs/cli.md)."""
from __future__ import annotations

from typing import Any, Callable

from edgectl.ops import config_check, domains, fleet, links, shards, tokens  # noqa: F401
from edgectl.ops.base import OPERATOR_COMMANDS, fail
from edgectl.ops.client import agent_failure
from edgectl.ops.help import DESCRIPTION, EXIT_CODES, PLAN_SETTINGS, needs

__all__ = ["DESCRIPTION", "EXIT_CODES", "PLAN_SETTINGS", "agent_failed", "needs", "register"]

ORDER = ("status", "nodes", "domains", "links", "certs", "tokens", "shards", "config")


def register(command: Callable[..., Callable[[Any], Any]]) -> None:
    """Hand each operator command to the CLI's registry (``edgectl.cli.command``); they read
    their own settings (None: the CLI's loader reads none for them)."""
    for declared in sorted(OPERATOR_COMMANDS, key=lambda declared: ORDER.index(declared.name)):
        command(declared.name, declared.help, required=None,
                arguments=declared.arguments)(declared.run)


def agent_failed(exc: Exception, url: str) -> int:
    """An agent's request (`edgectl plan`) failed: its one sentence on stderr, its exit code."""
    failure = agent_failure(exc, url)
    return fail(str(failure), failure.code)
