"""What an operator installs holds: the systemd units pass `systemd-analyze verify` and stay
hardened, their example environment files name only real settings and start the command they
belong to once the secrets are filled, and deploy/aws matches the code (every table it opens,
only the DynamoDB calls it makes), down to a CloudFormation stack the code then opens as is."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cryptography.fernet import Fernet

from edgectl.cli import COMMANDS
from edgectl.app import create_app
from kit.settings import ENV_PREFIX, SECRETS, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
AWS = ROOT / "deploy" / "aws"
UNITS = sorted(SYSTEMD.glob("*.service"))
INSTALLED = "/opt/edge-router/bin/edgectl"
"""Where the units expect the package's virtualenv (docs/production.md)."""
SETTINGS = {name.upper() for name in Settings.__dataclass_fields__}


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every line of a unit file, in order (keys repeat in units)."""
    entries, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [value for _, name, value in unit_entries(path) if name == key]


def environment_file(path: Path) -> dict[str, str]:
    """The variables of a systemd EnvironmentFile (KEY=value lines; # comments)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def example_for(unit: Path) -> Path:
    """The example in deploy/systemd of the unit's EnvironmentFile (/etc/edge-router/X.env)."""
    [installed] = unit_values(unit, "EnvironmentFile")
    return SYSTEMD / Path(installed).name


def subcommand(unit: Path) -> str:
    [exec_start] = unit_values(unit, "ExecStart")
    return exec_start.split()[1]


def test_there_is_a_unit_for_serve_agent_and_shortlinks() -> None:
    assert sorted(subcommand(unit) for unit in UNITS) == ["agent", "serve", "shortlinks"]
    for unit in UNITS:
        assert unit_values(unit, "ExecStart")[0].split()[0] == INSTALLED
        assert example_for(unit).exists(), f"{unit.name}: no example {example_for(unit).name}"


def _installed_copies(directory: Path) -> list[Path]:
    """The units with ExecStart pointing at this machine's edgectl: verify checks that the
    program exists, and nothing is installed under /opt here."""
    edgectl = shutil.which("edgectl") or pytest.fail("edgectl is not installed (pip install -e .)")
    copies = []
    for unit in UNITS:
        copy = directory / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, edgectl))
        copies.append(copy)
    return copies


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: run scripts/bootstrap.sh --test (Debian systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=120)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # Without a running systemd (a container, CI) verify still parses every unit, checks each
    # key and value and that ExecStart's program exists. It exits 0 on an unknown key, with a
    # warning: so any output at all fails too.
    result = _systemd_analyze("verify", "--man=no", *map(str, _installed_copies(tmp_path)))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr)


def test_units_are_hardened(tmp_path: Path) -> None:
    for unit in UNITS:
        values = {key: value for _, key, value in unit_entries(unit)}
        expected = {"Type": "exec", "User": "edge-router", "NoNewPrivileges": "yes",
                    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}
        assert {key: values.get(key) for key in expected} == expected, unit.name
        assert values["Restart"] in ("always", "on-failure"), unit.name
        # strict: everything read-only; the state directory is what it may write.
        assert values["StateDirectory"].startswith("edge-router/"), unit.name
        assert values["WorkingDirectory"] == f"/var/lib/{values['StateDirectory']}", unit.name
        capabilities = "CAP_NET_BIND_SERVICE" if subcommand(unit) == "agent" else ""
        assert values["CapabilityBoundingSet"] == capabilities, unit.name
        assert values["AmbientCapabilities"] == capabilities, unit.name
    for copy in _installed_copies(tmp_path):
        # systemd's own score of the sandbox: at most 2.0 of 10 (the threshold counts tenths).
        result = _systemd_analyze("security", "--offline=yes", "--threshold=20", str(copy))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_a_restart_of_the_agent_leaves_haproxy_serving() -> None:
    [agent] = [unit for unit in UNITS if subcommand(unit) == "agent"]
    assert unit_values(agent, "KillMode") == ["process"]
    assert unit_values(agent, "ExecStop") == []  # retiring a node is not a restart


def test_the_units_user_is_the_one_sysusers_creates(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                             str(SYSTEMD / "edge-router.sysusers")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    users = {line.split(":")[0] for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    assert {value for unit in UNITS for value in unit_values(unit, "User")} <= users


def filled(variables: dict[str, str]) -> dict[str, str]:
    """The example's variables with each empty secret given a valid value."""
    secrets = {"API_TOKEN": "api-token-" + uuid.uuid4().hex,
               "EDGE_TOKEN": "edge-token-" + uuid.uuid4().hex,
               "ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    return {key: value or secrets.get(key.removeprefix(ENV_PREFIX), value)
            for key, value in variables.items()}


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.stem)
def test_the_example_environment_starts_its_command(unit: Path) -> None:
    variables = environment_file(example_for(unit))
    variables.update(dict(value.split("=", 1) for value in unit_values(unit, "Environment")))
    unknown = [key for key in variables
               if not (key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX) in SETTINGS)]
    assert unknown == [], f"{example_for(unit).name}: not settings: {unknown}"
    # A secret is never shipped in an example, so none can be copied into production.
    shipped = [key for key, value in variables.items()
               if key.removeprefix(ENV_PREFIX).lower() in SECRETS and value]
    assert shipped == []
    required = COMMANDS[subcommand(unit)].required or ()
    with pytest.raises(SettingsError):  # as shipped it refuses to start: its secrets are empty
        load_settings(env=variables, required=required)
    settings = load_settings(env=filled(variables), required=required)
    assert settings.log_format == "json"  # journald: one object a line
    if subcommand(unit) != "agent":
        assert settings.storage_backend == "dynamodb"


def test_the_aws_files_are_generated_from_the_code() -> None:
    """In this process, whose collection already imported the modules the script walks for
    TableSpecs: a subprocess imported all of them again (19 s of a loaded full run)."""
    spec = importlib.util.spec_from_file_location("aws_generate", AWS / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for path, text in generate.rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/aws/generate.py"
    assert generate.main(["--check"]) == 0


def _dynamo_calls() -> set[str]:
    source = "".join((ROOT / "store" / name).read_text()  # the backend, its tables, backups
                     for name in ("dynamo.py", "dynamo_table.py", "backup_stores.py"))
    calls = set(re.findall(r"_client\.([a-z_]+)\(", source))
    calls |= set(re.findall(r"_(?:call|page|request)\(\s*\"([a-z_]+)\"", source))
    return {"dynamodb:" + "".join(part.title() for part in call.split("_"))
            for call in calls - {"close"}}


def test_the_policy_allows_the_calls_the_code_makes_and_no_more() -> None:
    policy = json.loads((AWS / "iam-policy.json").read_text())
    allowed = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert allowed == _dynamo_calls()
    resources = [resource for statement in policy["Statement"]
                 for resource in statement["Resource"]]
    assert all(re.fullmatch(r"arn:aws:dynamodb:REGION:ACCOUNT_ID:table/edge_[a-z_]+"
                            r"(/index/\*)?", resource) for resource in resources), resources
    assert all(statement["Effect"] == "Allow" and "*" not in "".join(statement["Action"])
               for statement in policy["Statement"])
    # IAM's limit for a managed policy, whitespace left out.
    assert len(json.dumps(policy, separators=(",", ":"))) < 6144


def _template() -> dict[str, Any]:
    return yaml.safe_load((AWS / "tables.yaml").read_text())


def test_every_table_is_on_demand_with_ttl_and_point_in_time_recovery() -> None:
    tables = [resource["Properties"] for resource in _template()["Resources"].values()
              if resource["Type"] == "AWS::DynamoDB::Table"]
    assert tables
    for table in tables:
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at",
                                                    "Enabled": True}
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_the_code_opens_the_stack_as_it_is(moto_server: str, services_with: Any) -> None:
    """The stack, deployed (on moto's CloudFormation), holds every table the control service
    opens with every index it queries: opening them creates and changes nothing."""
    prefix = f"d{uuid.uuid4().hex[:8]}_"
    stack = boto3.client("cloudformation", endpoint_url=moto_server, region_name="us-east-1")
    stack.create_stack(StackName=prefix.rstrip("_"),
                       TemplateBody=(AWS / "tables.yaml").read_text(), Parameters=[{"ParameterKey": "TablePrefix", "ParameterValue": prefix}])
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")

    def layout() -> dict[str, list[str]]:
        names = [name for name in dynamodb.list_tables(Limit=100)["TableNames"]
                 if name.startswith(prefix)]
        return {name: sorted(index["IndexName"] for index in dynamodb.describe_table(
            TableName=name)["Table"].get("GlobalSecondaryIndexes", [])) for name in names}

    deployed = layout()
    policy = _template()["Resources"]["EdgeRouterPolicy"]["Properties"]["PolicyDocument"]
    in_policy = {resource["Fn::Sub"].rsplit("}", 1)[1] for statement in policy["Statement"]
                 if statement["Sid"] == "Items" for resource in statement["Resource"]}
    assert {name.removeprefix(prefix) for name in deployed} == in_policy
    services = services_with(storage_backend="dynamodb", dynamodb_endpoint_url=moto_server,
                             dynamodb_table_prefix=prefix)
    create_app(services)  # the dashboard's and the publisher pages' tables too
    assert layout() == deployed
