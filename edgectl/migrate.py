"""`edgectl migrate --plan|--apply`: the store's schema migrations (control/migrations.py).

Run ``--apply`` once every control replica runs this release: the last step of a rolling
upgrade, after the replicas and the agents. It needs only the store's settings."""
from __future__ import annotations

import argparse
import logging
import sys

from control import migrations
from control.migrations import SCHEMA, refusal
from kit.settings import Settings
from store import Backend, StoreError, open_backend

__all__ = ["HELP", "SCHEMA", "arguments", "check_schema", "run"]
log = logging.getLogger("edgectl")
HELP = "the store's schema: the migrations pending (--plan), or run them (--apply)"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Settings: storage_backend with sqlite_path, or dynamodb_endpoint_url, "
                     "dynamodb_region and dynamodb_table_prefix.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--plan", action="store_true", help="list the pending migrations")
    action.add_argument("--apply", action="store_true",
                        help="run them, one process at a time (a lease in the store)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        backend = open_backend(settings)
    except StoreError as exc:
        print(f"edgectl migrate: the store does not answer: {exc}", file=sys.stderr)
        return 1
    try:
        current = migrations.schema_version(backend)
        refused = refusal(backend)
        if refused:
            print(f"edgectl migrate: {refused}", file=sys.stderr)
            return 2
        todo = migrations.pending(backend)
        print(f"store schema {current}; this release knows {migrations.SCHEMA}")
        if args.plan or not todo:
            for migration in todo:
                print(f"  {migration.number}: {migration.sentence}")
            print(f"{len(todo)} pending" + (": run `edgectl migrate --apply`" if todo else ""))
            return 0
        try:
            done = migrations.apply(backend)
        except migrations.LeaseHeld as exc:
            print(f"edgectl migrate: {exc}", file=sys.stderr)
            return 1
        for migration, changed in done:
            print(f"  {migration.number}: {migration.sentence}: {changed} items changed")
        print(f"store schema {migrations.schema_version(backend)}")
        return 0
    except StoreError as exc:
        print(f"edgectl migrate: the store failed: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()


def check_schema(settings: Settings) -> None:
    """Exit (2), saying why, if the store's schema is newer than this release knows: a
    release must not write a store whose shape it does not know. An older schema is fine.
    A new store (no item in any table) is stamped with this release's schema: it has nothing
    to migrate, and left at 0 it would keep the oldest layout (DynamoDB's index keys unspread)
    until an operator thought of `edgectl migrate --apply`."""
    backend = open_backend(settings)
    try:
        refused, current = refusal(backend), migrations.schema_version(backend)
        if current == 0 and _new_store(backend):
            migrations.stamp(backend)
            log.info("a new store: its schema is this release's (%d)", SCHEMA)
            current = SCHEMA
    finally:
        backend.close()
    if current < SCHEMA and refused is None:
        log.info("store schema %d, this release's %d: run `edgectl migrate --apply` once every "
                 "replica runs this release", current, SCHEMA)
    if refused is not None:
        log.error("edgectl serve refuses to start: %s", refused)
        raise SystemExit(2)


def _new_store(backend: Backend) -> bool:
    """No item in any table of the product (one read a table; asked only at schema 0)."""
    from edgectl.backup import TABLES  # loads every table's module: not for operators' commands
    return not any(backend.table(spec).scan(limit=1).items for spec in TABLES)
