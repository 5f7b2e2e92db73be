"""HAProxy's runtime API (the admin stats socket): hot changes to maps and certificates.

Single commands use one connection each. Many changes go as one :class:`Batch`: the CLI's
interactive mode ("prompt") takes any number of commands on one connection, each answer ending
with an empty line and a new prompt, so a thousand certificates cost one connection, not four
thousand. What HAProxy 2.6 allows (management.txt): ``add map <map> <<`` takes many
``key value`` lines in one payload (up to ``tune.bufsize``, 16 kB); ``set map``/``del map``
take one key; ``new/set/commit ssl cert`` one certificate each; ``add ssl crt-list <<`` one
crt-list line. Changes made here live in memory only and vanish on reload, so the caller always
writes the same change to the files as well.
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path

from edge.errors import EdgeError
from edge.haproxy import unix_command


class RuntimeCommandFailed(EdgeError):
    def __init__(self, command: str, output: str) -> None:
        super().__init__(f"runtime API refused `{command}`: {output.strip()}")
        self.command = command
        self.output = output


class UnsafeCommand(RuntimeCommandFailed):
    """A command never sent: a control character in its line, or a payload with an empty line
    (where the runtime API ends a payload, so what follows would run as commands)."""

    def __init__(self, command: str, reason: str) -> None:
        EdgeError.__init__(self, f"runtime API command not sent ({reason}): {command!r:.200}")
        self.command = command
        self.output = reason


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7f for char in text)


def command_text(line: str, payload: str | None) -> str:
    """What goes on the socket for one command: raises :class:`UnsafeCommand` rather than send
    a line that holds a control character (a newline starts another command) or a payload
    that holds an empty line or a carriage return (HAProxy reads "\\r\\n" as "\\n")."""
    if _has_control(line):
        raise UnsafeCommand(line, "a control character in the command")
    if payload is None:
        return line + "\n"
    body = payload.rstrip()
    if "\r" in body or "\n\n" in body or body.startswith("\n"):
        raise UnsafeCommand(line, "an empty line or a carriage return in the payload")
    return f"{line} <<\n{body}\n\n"


def pem_payload(pem: str) -> str:
    """PEM text with no empty line and no carriage return (PEM parsers need neither): what a
    certificate upload sends, so a chain with blank lines between its blocks still goes."""
    return "\n".join(row for row in pem.replace("\r", "").split("\n") if row.strip())


class RuntimeAPI:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def command(self, line: str, payload: str | None = None) -> str:
        return unix_command(self.socket_path, command_text(line, payload))

    def batch(self) -> "Batch":
        return Batch(self)

    def run_batch(self, commands: list[tuple[str, str | None]], timeout: float = 120) -> list[str]:
        """Send ``(line, payload)`` commands on one interactive connection; their answers."""
        if not commands:
            return []
        text = "prompt\n" + "".join(
            command_text(line, payload) for line, payload in commands) + "quit\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            # Written from a thread while this one reads: HAProxy stops reading while its
            # answers wait, and a large batch would fill both buffers.
            writer = threading.Thread(target=sock.sendall, args=(text.encode(),), daemon=True)
            writer.start()
            chunks = []
            while chunk := sock.recv(262144):
                chunks.append(chunk)
            writer.join(timeout)
        answers = b"".join(chunks).decode(errors="replace").split("\n> ")
        # answers[0] is the prompt command's; each later one starts with "+ " per payload line
        return [answer.lstrip("+ ").rstrip("\n") for answer in answers[1:len(commands) + 1]]

    def show_map(self, map_path: Path) -> dict[str, str]:
        entries = {}
        for row in self.command(f"show map {map_path}").splitlines():
            fields = row.split()
            if len(fields) == 3 and fields[0].startswith("0x"):
                entries[fields[1]] = fields[2]
        return entries

    def crt_list_names(self, crt_list: Path) -> set[str]:
        """The SNI names of a crt-list as HAProxy holds it (``show ssl crt-list``)."""
        names = set()
        for row in self.command(f"show ssl crt-list {crt_list}").splitlines():
            if row and not row.startswith("#"):
                # "<cert path> [<options>] <sni>..." where the options are optional
                names.update(row.split("]", 1)[1].split() if "]" in row else row.split()[1:])
        return names

    def show_table(self, table: str, counter: str) -> dict[str, int]:
        """``key -> counter`` of a stick table (``show table``: ``0x..: key=k use=0 exp=.. c=n``)."""
        counts = {}
        for row in self.command(f"show table {table}").splitlines():
            fields = dict(f.split("=", 1) for f in row.split()[1:] if "=" in f)
            if row.startswith("0x") and "key" in fields and fields.get(counter, "").isdigit():
                counts[fields["key"]] = int(fields[counter])
        return counts

    def worker_pid(self) -> int:
        """The PID of the worker answering (it changes on every reload or restart)."""
        for row in self.command("show info").splitlines():
            name, _, value = row.partition(":")
            if name == "Pid" and value.strip().isdigit():
                return int(value)
        raise RuntimeCommandFailed("show info", "no Pid line")


def _word(text: str) -> str:
    """One argument of the runtime API: ";" would end the command and start another one of the
    caller's choosing, and "\\" would be eaten as an escape. A control character is refused
    (raises :class:`UnsafeCommand`): a newline ends the command, a tab separates arguments,
    and no key or value the edge sends holds one."""
    if _has_control(text):
        raise UnsafeCommand(text, "a control character in an argument")
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(" ", "\\ ")


MISSING_OK = "(empty, or the key was not there)"


class Batch:
    """Runtime API changes collected, then sent on one connection by :meth:`send`, which
    raises :class:`RuntimeCommandFailed` for the first refused one (the ones before it are
    applied: the caller falls back to a reload from the files, which hold every change)."""

    MAP_PAYLOAD = 12000
    """Bytes of ``key value`` lines per ``add map`` payload (HAProxy's buffer is 16 kB)."""

    def __init__(self, api: RuntimeAPI) -> None:
        self._api = api
        self._commands: list[tuple[str, str | None, str]] = []
        self._map_adds: dict[Path, list[str]] = {}

    def __len__(self) -> int:
        return len(self._commands) + sum(len(lines) for lines in self._map_adds.values())

    def _add(self, line: str, success: str, payload: str | None = None) -> None:
        self._flush_map_adds()
        self._commands.append((line, payload, success))

    def del_map(self, map_path: Path, key: str, missing_ok: bool = False) -> None:
        self._add(f"del map {map_path} {_word(key)}", MISSING_OK if missing_ok else "")

    def set_map(self, map_path: Path, key: str, value: str, exists: bool) -> None:
        if exists:
            self._add(f"set map {map_path} {_word(key)} {_word(value)}", "")
        else:
            self.add_map(map_path, key, value)

    def add_map(self, map_path: Path, key: str, value: str) -> None:
        """Queued: consecutive adds to one map go as one payload (keys hold no spaces)."""
        if " " in key or _has_control(key + value):
            raise UnsafeCommand(f"add map {map_path} {key}", "an unsafe key or value")
        lines = self._map_adds.setdefault(map_path, [])
        lines.append(f"{key} {value}")

    def _flush_map_adds(self) -> None:
        for map_path, lines in self._map_adds.items():
            payload: list[str] = []
            size = 0
            for line in lines + [""]:
                if (size + len(line) > self.MAP_PAYLOAD or not line) and payload:
                    self._commands.append((f"add map {map_path}", "\n".join(payload), ""))
                    payload, size = [], 0
                if line:
                    payload.append(line)
                    size += len(line) + 1
        self._map_adds = {}

    def new_cert(self, cert_path: Path) -> None:
        self._add(f"new ssl cert {cert_path}", "New empty certificate store")

    def set_cert(self, cert_path: Path, pem: str) -> None:
        """Opens a transaction that :meth:`commit_cert` ends (one at a time: HAProxy 2.6
        keeps a single certificate transaction, so each set is followed by its commit)."""
        self._add(f"set ssl cert {cert_path}", "Transaction ", payload=pem_payload(pem))

    def commit_cert(self, cert_path: Path) -> None:
        self._add(f"commit ssl cert {cert_path}", "Success!")

    def add_crt_list_entry(self, crt_list: Path, cert_path: Path, sni: str) -> None:
        self._add(f"add ssl crt-list {crt_list}", "Success!",
                  payload=f"{cert_path} [alpn h2,http/1.1] {sni}")

    def delete_cert(self, crt_list: Path, cert_path: Path) -> None:
        self._add(f"del ssl crt-list {crt_list} {cert_path}", "deleted")
        self._add(f"del ssl cert {cert_path}", "deleted")

    def send(self) -> int:
        """Send what was collected; how many commands went."""
        self._flush_map_adds()
        commands, self._commands = self._commands, []
        answers = self._api.run_batch([(line, payload) for line, payload, _ in commands])
        if len(answers) < len(commands):
            raise RuntimeCommandFailed(commands[len(answers)][0], "no answer (connection lost)")
        for (line, _, success), answer in zip(commands, answers):
            if success == MISSING_OK:
                answer, success = answer.replace("Key not found.", ""), ""
            if (success and success not in answer) or (not success and answer.strip()):
                if line.startswith("set ssl cert") or line.startswith("commit ssl cert"):
                    self._api.command(f"abort ssl cert {line.split()[-1]}")
                raise RuntimeCommandFailed(line, answer)
        return len(commands)
