"""`edgectl backup FILE` and `edgectl restore FILE`: every table of the product, as stored
(private keys stay encrypted: neither command decrypts; both read the encryption keys, from
which the key that signs a backup and checks it is derived). The file format and what is
consistent: ``store/backup.py``, ``store/backup_stores.py`` and docs/backup.md."""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import IO

from admin.accounts import ADMIN_LOGIN_FAILURES, ADMIN_SESSIONS, ADMIN_USERS
from admin.audit import ADMIN_AUDIT
from certs.account import ACCOUNTS
from certs.challenges import CHALLENGES
from certs.limits import BUDGETS
from certs.orders import ORDERS
from certs.stats import ISSUANCE_STATS
from certs.store import CERTIFICATES
from certs.uploads import UPLOADS
from control.migrations import META
from domains.counts import DOMAIN_COUNTS
from domains.repository import DOMAINS
from domains.takeover import TAKEOVERS
from domains.timeline import EVENTS
from domains.webhooks import WEBHOOKS
from edge import restore as edge_restore
from edge.moves import EDGE_MOVES
from edge.shard_registry import EDGE_SHARDS
from edge.sso import SSO_CODES, SSO_KEYS
from edge.state_changes import EDGE_CERTS, EDGE_REDIRECTS, EDGE_ROUTES, EDGE_STATE
from edge.state_reports import EDGE_NODES, EDGE_VISIT_REPORTS
from kit.settings import Settings
from kit.tokens import API_TOKENS
from publisher.call_limits import PUBLISHER_CALLS
from shortlinks.leases import LINK_LEASES
from shortlinks.changes import LINK_CHANGES, after_restore, generation
from shortlinks.links import LINKS
from shortlinks.stats import LINK_DAYS
from store import StoreError, TableSpec, open_backend
from store.backup import (BackupError, Manifest, check_backup, private_copy, restore_backup,
                          take_backup)
from store.backup_stores import open_source, open_target

TABLES: tuple[TableSpec, ...] = (
    DOMAINS, DOMAIN_COUNTS, EVENTS, WEBHOOKS, TAKEOVERS, API_TOKENS,
    CERTIFICATES, UPLOADS, ACCOUNTS, ORDERS, CHALLENGES, BUDGETS, ISSUANCE_STATS,
    EDGE_STATE, EDGE_ROUTES, EDGE_REDIRECTS, EDGE_CERTS, EDGE_NODES, EDGE_VISIT_REPORTS,
    EDGE_SHARDS, EDGE_MOVES,
    LINKS, LINK_CHANGES, LINK_DAYS, LINK_LEASES, SSO_KEYS, SSO_CODES,
    ADMIN_USERS, ADMIN_SESSIONS, ADMIN_LOGIN_FAILURES, PUBLISHER_CALLS, ADMIN_AUDIT, META)
"""Every table the product keeps (a test holds this to every ``TableSpec`` in the code), the
schema version (``store_meta``) with them, so a restored store says which migrations it had."""
MARKERS = (EDGE_STATE, DOMAIN_COUNTS, LINK_CHANGES)
"""Small tables that move with every change of the edge state (routes, certificates, plain
links), of a domain's status, and of a short link: read before and after a DynamoDB backup."""
DISTRIBUTION = "edge-router"


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _where(settings: Settings) -> str:
    if settings.storage_backend == "dynamodb":
        return f"the DynamoDB tables {settings.dynamodb_table_prefix}*"
    return f"the SQLite store at {settings.sqlite_path}"


def _fail(message: str, status: int) -> int:
    print(f"edgectl: {message}", file=sys.stderr)
    return status


def _warn_if_changed(manifest: Manifest) -> None:
    if manifest.changed_during:
        print(f"edgectl: warning: {', '.join(manifest.changed_during)} changed while the "
              "backup read the tables, so items may be from different moments; for one "
              "instant, stop the control service during the backup (see docs/backup.md)",
              file=sys.stderr)


def run_backup(args: argparse.Namespace, settings: Settings) -> int:
    """Write every table of the store the settings name to a new backup file."""
    path = Path(args.file)
    if not settings.encryption_keys:  # else the file would be unsigned: a restore refuses it
        return _fail("a backup is signed under the first of encryption_keys: set them", 2)
    try:
        source = open_source(settings, TABLES)
        try:
            manifest = take_backup(source, TABLES, path, _version(), MARKERS,
                                   settings.encryption_keys)
        finally:
            source.close()
    except BackupError as exc:
        return _fail(str(exc), exc.status)
    except StoreError as exc:
        return _fail(f"cannot read {_where(settings)}: {exc}", 1)
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}", 1)
    print(f"backed up {manifest.items} items of {_where(settings)} to {path} "
          f"({manifest.consistency})")
    _warn_if_changed(manifest)
    return 0


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    """Restore a backup file into the store the settings name (empty, unless --force), once
    it is signed under one of the encryption keys (or unsigned, of the release before, and
    --allow-unsigned)."""
    path = Path(args.file)
    try:
        with private_copy(path) as copy:  # what is checked is what is written
            return _restore(args, settings, path, copy)
    except BackupError as exc:
        return _fail(str(exc), exc.status)


def _restore(args: argparse.Namespace, settings: Settings, path: Path, copy: IO[bytes]) -> int:
    try:
        manifest = check_backup(path, TABLES, settings.encryption_keys,  # before the store is
                                getattr(args, "allow_unsigned", False), copy)  # opened (made)
        backend = open_backend(settings)
    except BackupError as exc:
        return _fail(str(exc), exc.status)
    except StoreError as exc:
        return _fail(f"cannot open {_where(settings)}: {exc}", 1)
    try:
        changes, state = backend.table(LINK_CHANGES), backend.table(EDGE_STATE)
        before, revisions = generation(changes), edge_restore.revisions(state)
        restore_backup(open_target(backend), TABLES, path, args.force, copy)
        after_restore(changes, before)  # redirect processes running beside drop their caches
        edge_restore.after_restore(state, backend.table(EDGE_MOVES), revisions)  # and agents
    except BackupError as exc:
        return _fail(str(exc), exc.status)
    except StoreError as exc:
        return _fail(f"cannot write {_where(settings)}: {exc}", 1)
    finally:
        backend.close()
    print(f"restored {manifest.items} items into {_where(settings)} from a {manifest.backend} "
          f"backup of {manifest.started_at} (edge-router {manifest.product_version})")
    if not manifest.signed:
        print(f"edgectl: warning: {path} was not signed (format {manifest.format_version}, "
              "written before backups were signed) and was restored on --allow-unsigned: "
              "nothing showed that it held only what its release wrote", file=sys.stderr)
    _warn_if_changed(manifest)
    return 0
