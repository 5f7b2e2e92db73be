"""`edgectl backup` and `edgectl restore` as the CLI declares them: their arguments here, their
work in ``edgectl.backup``, loaded only when one of them runs (it reaches every package's tables
and boto3, which the other commands have no use for)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from kit.settings import Settings

STORE_SETTINGS = ("storage_backend", "sqlite_path", "dynamodb_endpoint_url", "dynamodb_region",
                  "dynamodb_table_prefix")
KEYS = ("encryption_keys",)
"""The setting both cannot run without (the store's have defaults): a backup is signed under a
key derived from the first encryption key, and checked under those of each."""


def _backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the backup to write (a new file: an existing one is kept)")
    parser.epilog = (f"settings: {', '.join(STORE_SETTINGS)}, encryption_keys (the backup is "
                     "signed under the first; nothing is decrypted)")


def _restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a file written by edgectl backup")
    parser.add_argument("--force", action="store_true",
                        help="delete what the store holds first (else a store that is not "
                             "empty is refused)")
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="restore a backup written before backups were signed (format 1), "
                             "with a warning: nothing shows it was not changed since")
    parser.epilog = (f"settings: {', '.join(STORE_SETTINGS)}, encryption_keys (a backup "
                     "signed under none of them is refused); stop every control replica on "
                     "that store first")


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from edgectl.backup import run_backup
    return run_backup(args, settings)


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from edgectl.backup import run_restore
    return run_restore(args, settings)


def register(command: Callable[..., Callable[[Any], Any]]) -> None:
    """Add both commands to the CLI's registry (passed in: the CLI imports this module)."""
    command("backup", "write every table of the store to a backup file", required=KEYS,
            arguments=_backup_arguments)(_backup)
    command("restore", "restore a backup file into an empty store", required=KEYS,
            arguments=_restore_arguments)(_restore)
