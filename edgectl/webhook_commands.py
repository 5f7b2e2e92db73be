"""`edgectl webhooks redeliver --failed`: queue again the webhooks the sender gave up on (a
receiver down longer than ``webhook_retry_hours``), once the receiver is back. Reads the failed
events only (the ``state`` index); each is due at once with a new retry window."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from kit.settings import Settings

HELP = "queue failed webhooks for delivery again"


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    redeliver = sub.add_parser("redeliver", help="queue webhooks again, due at once",
                               description="queue webhooks again, due at once, each with a "
                                           "new retry window; the running replicas send them")
    redeliver.add_argument("--failed", action="store_true", required=True,
                           help="the webhooks left failed after their retry window")
    parser.epilog = ("settings: storage_backend, sqlite_path, dynamodb_endpoint_url, "
                     "dynamodb_region, dynamodb_table_prefix")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from domains.webhooks import WEBHOOKS, WebhookSender
    from store import open_backend
    backend = open_backend(settings)
    try:
        sender = WebhookSender(backend.table(WEBHOOKS), "", "", counted=True)
        count = sender.redeliver_failed()
    finally:
        backend.close()
    print(f"{count} failed webhook(s) queued again")
    return 0


def register(command: Callable[..., Callable[[Any], Any]]) -> None:
    """Add the command to the CLI's registry (passed in: the CLI imports this module)."""
    command("webhooks", HELP, required=(), arguments=_arguments)(_run)
