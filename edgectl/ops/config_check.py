"""`edgectl config check FILE...`: a settings file checked before a deploy, every problem at
once (a process refuses to start at the first): unknown keys, values its parser refuses, the
settings the process cannot run without, then the checks across settings."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

from edgectl.ops.base import OPERATOR_COMMANDS, OperatorCommand, explained
from edgectl.ops.client import OK, REFUSED, USAGE
from kit.settings import (CONTROL_SERVICE, EDGE_AGENT, ENV_PREFIX, RETIRED, SECRETS, Settings,
                          SettingsError, load_settings)

PARSERS: dict[str, Callable[[Any], Any]] = {
    field.name: field.metadata["parse"] for field in dataclasses.fields(Settings)}
ROLES = {"serve": CONTROL_SERVICE, "shortlinks": CONTROL_SERVICE, "agent": EDGE_AGENT,
         "operator": ("api_token",)}


class Unreadable(Exception):
    pass


@dataclasses.dataclass
class Found:
    """What the files set: TOML values by key, environment-file values by variable name."""

    toml: dict[str, Any] = dataclasses.field(default_factory=dict)
    toml_file: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)


def _env_lines(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= and shells read them."""
    found = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, equals, value = line.removeprefix("export ").partition("=")
        if not equals or not name.strip().isidentifier():
            raise Unreadable(f"{path}:{number} is not NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[name.strip()] = value
    return found


def _read(paths: list[str]) -> Found:
    found = Found()
    for path in map(Path, paths):
        try:
            if path.suffix == ".toml":
                if found.toml_file:
                    raise Unreadable(f"one TOML file at a time ({found.toml_file}, {path})")
                found.toml, found.toml_file = tomllib.loads(path.read_text()), str(path)
                keys = set(found.toml)
            else:
                values = _env_lines(path)
                found.env.update(values)
                keys = {name.removeprefix(ENV_PREFIX).lower() for name in values}
        except (OSError, UnicodeDecodeError) as exc:
            raise Unreadable(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        except tomllib.TOMLDecodeError as exc:
            raise Unreadable(f"{path} is not valid TOML: {exc}") from None
        if keys & set(SECRETS) and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.warnings.append(f"{path} holds secrets ({', '.join(sorted(keys & set(SECRETS)))}"
                                  f") but others may read it: chmod 600 {path}")
    return found


def _values(found: Found) -> dict[str, tuple[str, Any]]:
    """Setting -> (where it is set, value); the environment wins, as at run time."""
    values: dict[str, tuple[str, Any]] = {key: (f"{key} in {found.toml_file}", value)
                                          for key, value in found.toml.items()}
    for name, value in found.env.items():
        if not name.startswith(ENV_PREFIX):
            continue  # PATH, PYTHONPATH...: not ours
        if name == f"{ENV_PREFIX}CONFIG":
            found.warnings.append(f"{name} names {value}: check that file too")
            continue
        values[name.removeprefix(ENV_PREFIX).lower()] = (name, value)
    return values


def check(paths: list[str], role: str) -> Found:
    found = _read(paths)
    values = _values(found)
    parsed: dict[str, Any] = {}
    for key, (where, value) in sorted(values.items()):
        if key in RETIRED:
            found.warnings.append(f"{where} is no longer used ({RETIRED[key]}): remove it")
        elif key not in PARSERS:
            close = difflib.get_close_matches(key, PARSERS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            found.problems.append(f"{where}: unknown setting{hint}")
        else:
            try:
                PARSERS[key](value)
                parsed[key] = value
            except (ValueError, TypeError) as exc:
                found.problems.append(f"{where}: {exc}")
    for key in ROLES[role]:
        if key not in values:
            kind = "secret" if key in SECRETS else "setting"
            found.problems.append(f"{ENV_PREFIX}{key.upper()} ({key}) is missing: `edgectl "
                                  f"{role}` needs this {kind}")
    try:  # the rules across settings, over the values that parse (the first it finds)
        load_settings(env={}, required=(), **parsed)
    except SettingsError as exc:
        found.problems.append(str(exc))
    found.warnings += _unassigned_zones(parsed) + _open_exporters(parsed)
    return found


def _open_exporters(parsed: dict[str, Any]) -> list[str]:
    """The edge's exporters listening on every address: per-publication request counts for
    anyone who reaches the node, unless a firewall stands in front."""
    ports = [name for name, default in (("edge_stats_port", 8404), ("edge_metrics_port", 0))
             if PARSERS[name](parsed.get(name, default))]
    bind = str(parsed.get("edge_metrics_bind") or parsed.get("edge_bind") or "127.0.0.1")
    if not ports or bind not in ("0.0.0.0", "::", "*", "[::]"):
        return []
    return [f"{' and '.join(ports)} listen on every address ({bind}): anyone who reaches the "
            f"node reads them; set edge_metrics_bind to its private address, or firewall them"]


def _unassigned_zones(parsed: dict[str, Any]) -> list[str]:
    """Registrar zones that name no ``publications``: a connect creates no record there (the
    zone may hold other parties' names), which is right for a platform zone (the dcv_zone),
    and a surprise for a publisher's zone whose automation was set up on purpose."""
    if "registrars" not in parsed:
        return []
    dcv_zone = PARSERS["dcv_zone"](parsed.get("dcv_zone", ""))
    return [f"registrars zone {zone!r} names no publications: no connect creates records "
            f"there; name the publications whose hostnames it holds (publications = "
            f"[\"pub_...\"]), or publications = [] for a platform zone"
            for zone, config in PARSERS["registrars"](parsed["registrars"]).items()
            if "publications" not in config and zone != dcv_zone]


def config(args: argparse.Namespace, settings: Settings) -> int:
    try:
        found = check(args.files, args.role)
    except Unreadable as exc:
        print(f"edgectl: {exc}", file=sys.stderr)
        return USAGE
    for warning in found.warnings:
        print(f"warning: {warning}")
    for problem in found.problems:
        print(f"problem: {problem}")
    names = ", ".join(os.path.basename(path) for path in args.files)
    if found.problems:
        print(f"{names}: {len(found.problems)} problem(s) for `edgectl {args.role}`")
        return REFUSED
    print(f"{names}: ok for `edgectl {args.role}`")
    return OK


def _arguments(parser: argparse.ArgumentParser) -> None:
    explained(parser, "A file ending in .toml holds TOML keys (api_token = \"...\"); any other "
              "is an environment file\n(EDGE_API_TOKEN=..., as systemd's EnvironmentFile= "
              "reads it). Give both to check them as the\nprocess would see them (the "
              "environment wins). Exit 0: fine; 1: problems; 2: a file cannot be read.")
    chosen = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    checking = chosen.add_parser("check", help="check settings files before a deploy: unknown "
                                 "keys, missing secrets, bad values")
    explained(checking, parser.epilog or "")
    checking.add_argument("files", nargs="+", metavar="FILE")
    checking.add_argument("--for", dest="role", choices=sorted(ROLES), default="serve",
                          help="the process the files are for (default serve): what it needs")


OPERATOR_COMMANDS.append(OperatorCommand("config", "settings files: check one before a deploy",
                                         _arguments, config))
