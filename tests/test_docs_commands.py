"""Every shell command in the README and the docs is run: executed here (the cheap ones), or
named with the test (or CI step) that runs it, which must exist. The few that change a host
(apt, systemd, AWS) are listed apart with the reason and what checks them instead, so a new
command in the docs fails this test until someone says how it is run."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """Each fenced block as (language, lines)."""
    blocks: list[tuple[str, list[str]]] = []
    language, lines = None, []
    for line in text.splitlines():
        found = FENCE.match(line)
        if language is None and found:
            language, lines = found.group(2), []
        elif language is not None and line.strip() == "```":
            blocks.append((language, lines))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def commands(lines: list[str]) -> list[str]:
    """The commands of a shell block: continuations joined, comments and blank lines left out,
    spaces collapsed."""
    found: list[str] = []
    pending = ""
    for line in lines:
        line = re.sub(r"(^|\s)#\s.*$|^\s*#.*$", "", line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = " ".join((pending + line).split())
        pending = ""
        if command:
            found.append(command)
    return found


def documented_commands() -> dict[str, str]:
    """Every command in a shell block of the README or docs/, with where it is."""
    found: dict[str, str] = {}
    for path in documents():
        for language, lines in fenced_blocks(path.read_text()):
            if language in SHELL:
                for command in commands(lines):
                    found.setdefault(command, str(path.relative_to(ROOT)))
    return found


PLACEHOLDER_ENV = ("EDGE_API_TOKEN=... EDGE_EDGE_TOKEN=... EDGE_ENCRYPTION_KEYS=... "
                   "EDGE_CONTROL_TLS_CERT=control.pem EDGE_CONTROL_TLS_KEY=control.key")

USERS_CLI_TEST = ("tests/test_admin_users_cli.py::"
                  "test_a_new_password_end_sessions_and_a_deleted_account_sign_the_user_out")
EXECUTED: dict[str, str] = {
    # command: what its output must hold (run in order, in one scratch directory)
    "edgectl --help": "run the control service and its worker",
    "edgectl --version": "edge protocol",
    "edgectl keys generate": "=",
    "printf '%s\\n' \"$PASSWORD\" | edgectl admin create-user alice --password-stdin":
        "admin user alice created",
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "
    "/CN=edge-router-control-ca -keyout control-ca.key -out control-ca.crt": "",
    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=control-1 "
    "-keyout control.key -out control.csr": "",
    "openssl x509 -req -in control.csr -CA control-ca.crt -CAkey control-ca.key -days 825 "
    "-extfile <(echo \"subjectAltName=IP:10.0.1.11\") -out control.crt": "",
}
"""Run by :func:`test_the_cheap_commands_run_as_written`."""

RUN_BY: dict[str, tuple[str, str]] = {
    # command: (the test that runs it, a string that test's file holds to show how)
    "bash scripts/test.sh": (".ci/run", "bash scripts/test.sh"),
    "bash scripts/test.sh -m \"not slow\"": (
        "tests/test_docs_commands.py::test_the_quick_tier_selects_by_the_slow_marker",
        '"not slow"'),
    "bash scripts/test.sh -k api": (
        "tests/test_docs_commands.py::test_the_quick_tier_selects_by_the_slow_marker",
        '"-k", "api or demo"'),
    "bash scripts/demo.sh": (
        "tests/test_end_to_end.py::test_the_demo_runs_writes_demo_json_and_stops_cleanly",
        '"edgectl", "demo"'),
    f"{PLACEHOLDER_ENV} edgectl serve": (
        "tests/test_topology.py::"
        "test_a_domain_is_served_by_both_nodes_and_a_replica_cut_off_fails_no_request",
        '"EDGE_CONTROL_TLS_CERT"'),
    "EDGE_EDGE_TOKEN=... EDGE_CONTROL_URL=https://control:8000 "
    "EDGE_CONTROL_CA_BUNDLE=control-ca.pem edgectl agent": (
        "tests/test_topology.py::"
        "test_a_domain_is_served_by_both_nodes_and_a_replica_cut_off_fails_no_request",
        '"EDGE_CONTROL_CA_BUNDLE"'),
    "EDGE_EDGE_TOKEN=... EDGE_CONTROL_URL=https://control:8000 edgectl plan": (
        "tests/test_operator_cli.py::test_plan_says_a_client_certificate_is_needed",
        'served.run("plan"'),
    "edgectl keys rotate": (
        "tests/test_key_rotation.py::"
        "test_rotate_reencrypts_everything_and_the_old_key_can_then_go", '"keys", "rotate"'),
    "edgectl admin create-user alice": (
        "tests/test_admin_accounts.py::test_cli_creates_a_user_from_stdin", '"create-user"'),
    **{f"edgectl admin {action}": (USERS_CLI_TEST, f'"{action.split()[0]}"') for action in (
        "list-users", "set-password alice", "end-sessions alice", "delete-user alice")},
    "edgectl backup /var/backups/edge/$(date -u +%Y%m%dT%H%M%SZ).backup": (
        "tests/test_backup.py::test_a_store_comes_back_whole_in_a_fresh_one", '"backup"'),
    "edgectl restore /var/backups/edge/20250101T000000Z.backup": (
        "tests/test_backup.py::test_a_store_comes_back_whole_in_a_fresh_one", '"restore"'),
    "edgectl webhooks redeliver --failed": (
        "tests/test_webhooks_delivery.py::"
        "test_a_two_day_outage_loses_nothing_and_the_counts_show_it",
        '"webhooks", "redeliver", "--failed"'),
    "edgectl migrate --plan": (
        "tests/test_versions.py::test_migrate_plans_and_applies_once_under_a_lease",
        '"migrate", "--plan"'),
    "edgectl migrate --apply": (
        "tests/test_versions.py::test_migrate_plans_and_applies_once_under_a_lease",
        '"migrate", "--apply"'),
    "edgectl status": ("tests/test_operator_cli.py::test_status_as_a_table_and_as_json",
                       'served.run("status")'),
    "edgectl nodes": ("tests/test_operator_cli.py::test_nodes", 'served.run("nodes")'),
    "edgectl domains list": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"domains", "list"'),
    "edgectl domains list --status active": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"--status"'),
    "edgectl domains list --failing": (
        "tests/test_docs_commands.py::test_the_operator_cli_takes_every_documented_option",
        '"--failing"'),
    "edgectl domains list --publication pub_1": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"--publication"'),
    "edgectl domains show blog.acme.com": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"domains", "show"'),
    "edgectl domains connect blog.acme.com --publication pub_1 [--with-www redirect|serve|none]": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"--with-www"'),
    "edgectl domains check blog.acme.com": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"domains", "check"'),
    "edgectl domains remove blog.acme.com --yes": (
        "tests/test_operator_cli.py::test_a_domain_from_connect_to_remove", '"--yes"'),
    "edgectl links list --owner pub_1": (
        "tests/test_operator_cli.py::test_links_create_list_show_stats_and_import",
        '"links", "list"'),
    "edgectl links create acme.link https://example.com/spring --owner pub_1 [--slug spring]": (
        "tests/test_operator_cli.py::test_links_create_list_show_stats_and_import",
        '"links", "create"'),
    "edgectl links show acme.link/spring": (
        "tests/test_operator_cli.py::test_links_create_list_show_stats_and_import",
        '"links", "show", "https://acme.link/spring"'),
    "edgectl links stats acme.link/spring --days 7": (
        "tests/test_operator_cli.py::test_links_create_list_show_stats_and_import",
        '"links", "stats"'),
    "edgectl links import links.csv": (
        "tests/test_operator_cli.py::test_links_create_list_show_stats_and_import",
        '"links", "import"'),
    "edgectl certs list": (
        "tests/test_operator_cli.py::test_certificates_expiring_within_a_window",
        '"certs", "list"'),
    "edgectl certs list --expiring 30d": (
        "tests/test_operator_cli.py::test_certificates_expiring_within_a_window",
        '"--expiring", "30d"'),
    "edgectl tokens create pub_1 --label cms": (
        "tests/test_operator_cli.py::test_tokens_create_list_and_revoke",
        '"tokens", "create", "pub_7", "--label", "cms"'),
    "edgectl tokens list pub_1": (
        "tests/test_operator_cli.py::test_tokens_create_list_and_revoke",
        '"tokens", "list", "pub_7"'),
    "edgectl tokens revoke 3f9a0c1d2e4b": (
        "tests/test_operator_cli.py::test_tokens_create_list_and_revoke",
        '"tokens", "revoke", token_id'),
    "edgectl config check serve.toml serve.env --for serve|agent|shortlinks|operator": (
        "tests/test_operator_cli.py::test_config_check_reports_every_problem",
        '"config", "check"'),
    "python3 scripts/gen_docs.py": (
        "tests/test_docs.py::test_the_generated_pages_are_current", "gen_docs.stale()"),
    "python3 scripts/render_bench.py RESULTS.jsonl": (
        "tests/test_docs.py::"
        "test_bench_results_render_with_their_conditions_and_keep_the_legacy_figures",
        '"render_bench.py"'),
    "mkdocs serve": ("tests/test_docs.py::test_the_site_builds_with_strict_checks",
                     '"mkdocs", "build", "--strict"'),
    "systemd-sysusers": (
        "tests/test_deploy.py::test_the_units_user_is_the_one_sysusers_creates",
        '"systemd-sysusers"'),
    "aws cloudformation deploy --stack-name edge-router --template-file deploy/aws/tables.yaml "
    "--parameter-overrides TablePrefix=edge_ --capabilities CAPABILITY_IAM": (
        "tests/test_deploy.py::test_the_code_opens_the_stack_as_it_is", '"TablePrefix"'),
}
"""Each is run by the named test as written, or as near as a test can: `bash scripts/demo.sh`
is `edgectl demo` after the bootstrap that CI runs too; the placeholders of the `serve`/`agent`
lines are filled by the systemd units' environment, in network namespaces; `aws cloudformation
deploy` is the same template deployed on moto through boto3; `mkdocs serve` serves what
`mkdocs build --strict` builds; `edgectl domains list --failing` is only parsed."""

NOT_RUN: dict[str, str] = {
    # command: why no test runs it, and what checks its part instead
    "apt-get install python3-venv haproxy": "changes the host; scripts/bootstrap.sh installs "
                                            "haproxy for CI",
    "systemctl disable --now haproxy": "needs systemd as PID 1; the agent's unit runs its own "
                                       "HAProxy (test_topology)",
    "python3 -m venv /opt/edge-router": "writes /opt; tests/test_deploy.py checks the units "
                                        "use /opt/edge-router's virtualenv",
    "/opt/edge-router/bin/pip install /path/to/edge-router": "installs a release build on a host",
    "install -m 0644 deploy/systemd/edge-router.sysusers /etc/sysusers.d/edge-router.conf":
        "writes /etc; test_deploy verifies the file with systemd-sysusers --root",
    "install -d -m 0755 /etc/edge-router && install -d -m 0750 -g edge-router "
    "/etc/edge-router/tls": "writes /etc on a host with the edge-router group",
    "install -m 0600 deploy/systemd/serve.env /etc/edge-router/serve.env":
        "writes /etc; test_deploy starts each unit's command from its example environment",
    "install -m 0644 deploy/systemd/edgectl-serve.service /etc/systemd/system/":
        "writes /etc; test_deploy runs systemd-analyze verify on the unit",
    "systemctl daemon-reload && systemctl enable --now edgectl-serve":
        "needs systemd as PID 1; test_topology starts the units' commands in namespaces",
}


def test_every_block_says_its_language() -> None:
    """A block without one could be a command nobody checks: say `sh` or `text`."""
    untagged = [str(path.relative_to(ROOT)) for path in documents()
                for language, _ in fenced_blocks(path.read_text()) if not language]
    assert untagged == []


def test_every_documented_command_is_run_or_says_why_not() -> None:
    documented = documented_commands()
    known = set(EXECUTED) | set(RUN_BY) | set(NOT_RUN)
    unknown = {command: where for command, where in documented.items() if command not in known}
    assert unknown == {}, "say how each is run: EXECUTED, RUN_BY or NOT_RUN"
    assert sorted(known - set(documented)) == [], "no longer in the docs: remove it here"
    assert len(NOT_RUN) <= 10, "most commands are run; only host changes are left out"


@pytest.mark.parametrize("command", sorted(RUN_BY))
def test_the_test_that_runs_it_exists(command: str) -> None:
    node, evidence = RUN_BY[command]
    path, _, name = node.partition("::")
    source = (ROOT / path).read_text()
    if name:
        assert re.search(rf"^(async )?def {re.escape(name)}\(", source, re.M), node
    assert evidence in source, f"{node} does not hold {evidence}"


@pytest.mark.slow  # a dozen processes, each importing the product: 10-15 s on 2 busy cores
def test_the_cheap_commands_run_as_written(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "edgectl"  # this tree's edgectl, whatever is installed
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m edgectl "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "PASSWORD": "correct-horse-battery-staple",
           "EDGE_API_TOKEN": "api-token-0123456789", "EDGE_EDGE_TOKEN": "edge-token-0123456789",
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    documented = documented_commands()
    for command in [c for c in documented if c in EXECUTED]:  # in the docs' order
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        assert EXECUTED[command] in done.stdout + done.stderr, command
    key = subprocess.run(["bash", "-c", "edgectl keys generate"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    Fernet(key.encode())  # a key EDGE_ENCRYPTION_KEYS takes
    verified = subprocess.run(["openssl", "verify", "-CAfile", "control-ca.crt", "control.crt"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    text = subprocess.run(["openssl", "x509", "-in", "control.crt", "-noout", "-text"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    assert "IP Address:10.0.1.11" in text


@pytest.mark.slow  # a pytest run of its own: about 10 s on a loaded machine
def collected(*args: str) -> str:
    """What pytest collects with ``args`` (one test id a line), as the suite's run sees it."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    return done.stdout


def test_the_quick_tier_selects_by_the_slow_marker() -> None:
    """`bash scripts/test.sh -m "not slow"` / `-k api`: pytest's own arguments, passed through
    by scripts/test.sh ("$@"); the quick tier leaves the slow-marked tests out."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert 'pytest -n 6 --dist loadgroup --durations=25 "$@"' in script
    picked = collected("-m", "not slow", "-k", "api or demo", "tests/test_end_to_end.py",
                       "tests/test_docs.py")
    assert "test_the_api_reference_is_the_document_the_app_serves" in picked
    assert "test_the_demo_runs" not in picked  # -m "not slow"
    assert "test_the_readme_is_short" not in picked  # -k api


def test_the_full_run_starts_the_slow_tests_first() -> None:
    """docs/testing.md: the slow tests first (test_end_to_end.py's are, test_docs.py's are
    not), each module's tests together."""
    order = collected("tests/test_docs.py", "tests/test_end_to_end.py")
    files = [line.split("::")[0] for line in order.splitlines() if "::" in line]
    assert list(dict.fromkeys(files)) == ["tests/test_end_to_end.py", "tests/test_docs.py"]
    assert files == sorted(files, reverse=True)  # each file's tests together


def test_no_browser_test_waits_with_eval() -> None:
    """docs/testing.md: Playwright's wait_for_function polls with eval, which the pages' CSP
    refuses, so it fails whenever its first check is false (a loaded machine)."""
    call = "wait_for_function" + "("
    found = [path.name for path in (ROOT / "tests").glob("*.py") if call in path.read_text()]
    assert found == [], f"poll page.evaluate with wait_until instead: {found}"


def test_the_operator_cli_takes_every_documented_option() -> None:
    """Options of docs/cli.md no test drives against a live service are at least accepted."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (["domains", "list", "--failing", "--help"],):
        done = subprocess.run([sys.executable, "-m", "edgectl", *argv], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "--failing" in done.stdout, done.stderr
