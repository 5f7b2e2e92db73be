"""HAProxy's runtime API (the admin stats socket): hot changes to maps and certificates.

One command per connection. Changes made here live in memory only and vanish on reload, so
the caller always writes the same change to the files as well.
"""
from __future__ import annotations

from pathlib import Path

from edge.errors import EdgeError
from edge.haproxy import unix_command


class RuntimeCommandFailed(EdgeError):
    def __init__(self, command: str, output: str) -> None:
        super().__init__(f"runtime API refused `{command}`: {output.strip()}")
        self.command = command
        self.output = output


class RuntimeAPI:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def command(self, line: str, payload: str | None = None) -> str:
        text = line + (f" <<\n{payload.rstrip()}\n\n" if payload is not None else "\n")
        return unix_command(self.socket_path, text)

    def _expect(self, line: str, success: str, payload: str | None = None) -> str:
        output = self.command(line, payload)
        if success not in output:
            raise RuntimeCommandFailed(line, output)
        return output

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

    def set_map(self, map_path: Path, key: str, value: str, exists: bool) -> None:
        verb = "set" if exists else "add"
        output = self.command(f"{verb} map {map_path} {_word(key)} {_word(value)}")
        if output.strip():
            raise RuntimeCommandFailed(f"{verb} map {map_path} {key}", output)

    def del_map(self, map_path: Path, key: str) -> None:
        output = self.command(f"del map {map_path} {_word(key)}")
        if output.strip():
            raise RuntimeCommandFailed(f"del map {map_path} {key}", output)

    def upload_cert(self, cert_path: Path, pem: str, new: bool) -> None:
        if new:
            self._expect(f"new ssl cert {cert_path}", "New empty certificate store")
        try:
            self._expect(f"set ssl cert {cert_path}", "Transaction ", payload=pem)
            self._expect(f"commit ssl cert {cert_path}", "Success!")
        except RuntimeCommandFailed:
            self.command(f"abort ssl cert {cert_path}")
            raise

    def add_crt_list_entry(self, crt_list: Path, cert_path: Path, sni: str) -> None:
        self._expect(f"add ssl crt-list {crt_list}", "Success!",
                     payload=f"{cert_path} [alpn h2,http/1.1] {sni}")

    def delete_cert(self, crt_list: Path, cert_path: Path) -> None:
        self._expect(f"del ssl crt-list {crt_list} {cert_path}", "deleted")
        self._expect(f"del ssl cert {cert_path}", "deleted")


def _word(text: str) -> str:
    """One argument of the runtime API: ";" would end the command and start another one of the
    caller's choosing, and "\\" would be eaten as an escape."""
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(" ", "\\ ")
