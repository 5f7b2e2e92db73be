"""How an operator command is declared: its parser (each with the settings it reads in its
``--help``), and a run that gets a :class:`ControlClient` and turns every failure into one
sentence and an exit code."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable

from edgectl.ops.client import SETTINGS_HELP, ControlClient, OperatorError, operator_settings
from edgectl.ops.output import json_flag
from kit.logs import strip_escapes
from kit.settings import Settings

Handler = Callable[[argparse.Namespace, ControlClient], int]
Arguments = Callable[[argparse.ArgumentParser], object]


@dataclasses.dataclass(frozen=True)
class OperatorCommand:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]


OPERATOR_COMMANDS: list[OperatorCommand] = []


def explained(parser: argparse.ArgumentParser, epilog: str = SETTINGS_HELP) -> None:
    parser.epilog = epilog
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def leaf(handler: Handler, arguments: Arguments | None = None, *,
         json: bool = True) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a command with no actions: its options, ``--json`` and the help."""
    def add(parser: argparse.ArgumentParser) -> None:
        explained(parser)
        if arguments is not None:
            arguments(parser)
        if json:
            json_flag(parser)
        parser.set_defaults(handler=handler)
    return add


def actions(table: dict[str, tuple[str, Handler, Arguments | None]]
            ) -> Callable[[argparse.ArgumentParser], None]:
    """``edgectl NAME ACTION ...``: one subparser per action, each with its help."""
    def add(parser: argparse.ArgumentParser) -> None:
        explained(parser)
        chosen = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        for name, (help, handler, arguments) in table.items():
            action = chosen.add_parser(name, help=help, description=help)
            leaf(handler, arguments)(action)
    return add


def operator_command(name: str, help: str,
                     arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Declare ``edgectl NAME``; ``edgectl.ops.register`` hands it to the CLI's registry."""
    OPERATOR_COMMANDS.append(OperatorCommand(name, help, arguments, run_operator))


def run_operator(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the handler the parser chose; the operator's settings are read here (not by the
    CLI's loader) to find the user's config file too."""
    try:
        client = ControlClient(operator_settings(args.config))
        code: int = args.handler(args, client)
        return code
    except OperatorError as exc:
        return fail(str(exc), exc.code)


def fail(message: str, code: int) -> int:
    print(f"edgectl: {strip_escapes(message)}", file=sys.stderr)
    return code


def body(**fields: Any) -> dict[str, Any]:
    """A request body without the options left out."""
    return {name: value for name, value in fields.items() if value is not None}
