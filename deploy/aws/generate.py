"""Writes tables.yaml (CloudFormation: every DynamoDB table the code opens, and a managed IAM
policy) and iam-policy.json (the same policy, for a role made elsewhere) from the code itself:
the tables from every ``TableSpec`` the product declares, their indexes from the DynamoDB
backend's own layout, the actions from the calls store/dynamo.py makes. So the files cannot
drift from the code: ``--check`` (run by tests/test_deploy.py) fails when they would change.

Run from the repository root: ``python deploy/aws/generate.py`` (or ``--check``).
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from store import EXPIRES_AT, TableSpec  # noqa: E402
from store import backup_stores, dynamo, dynamo_table  # noqa: E402

TTL_PROBE = "ttl_probe_never_created"
"""The table store/dynamo.py asks to enable TTL on, never created: whether the server has TTL."""
ITEM_ACTIONS = {"GetItem", "UpdateItem", "DeleteItem", "Scan", "PutItem", "BatchGetItem",
                "BatchWriteItem", "ConditionCheckItem"}
INDEX_ACTIONS = {"Query"}
"""The code queries only through an index (``by_<name>``, ``range_<name>``, ``expiry``) and
scans only the table."""
TABLE_ACTIONS = {"DescribeTable", "CreateTable", "UpdateTable", "UpdateTimeToLive",
                 "DescribeTimeToLive", "DescribeContinuousBackups"}


def table_specs() -> list[TableSpec]:
    """Every TableSpec declared at the top of a product module (the packages pyproject ships)."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found: dict[str, TableSpec] = {}
    for package in packages["packages"]:
        if "." in package:
            continue
        names = [package] + [f"{package}.{info.name}" for info in pkgutil.walk_packages(
            [str(ROOT / package)]) if not info.name.startswith("__")]
        for name in names:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if isinstance(value, TableSpec):
                    found[value.name] = value
    return [found[name] for name in sorted(found)]


def dynamo_actions() -> set[str]:
    """The DynamoDB API operations store/dynamo.py, store/dynamo_table.py and
    store/backup_stores.py (`edgectl backup` and `restore`) call, as IAM names (get_item:
    GetItem)."""
    source = "".join(Path(module.__file__).read_text()
                     for module in (dynamo, dynamo_table, backup_stores))
    if f"{{self._prefix}}{TTL_PROBE}" not in source:
        raise SystemExit(f"store/dynamo.py no longer probes TTL on {TTL_PROBE}: update "
                         f"{Path(__file__).name}")
    calls = set(re.findall(r"_client\.([a-z_]+)\(", source))
    calls |= set(re.findall(r"_(?:call|page|request)\(\s*\"([a-z_]+)\"", source))
    calls.discard("close")
    return {"".join(part.title() for part in call.split("_")) for call in calls}


def logical_id(spec: TableSpec) -> str:
    return "".join(part.title() for part in spec.name.split("_")) + "Table"


def table_resource(spec: TableSpec) -> dict[str, Any]:
    """The table as DynamoBackend._create makes it, on a server with TTL (AWS: no expiry index)."""
    properties: dict[str, Any] = {
        "TableName": {"Fn::Sub": "${TablePrefix}" + spec.name},
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": dynamo._attributes(spec),
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    }
    if dynamo._indexes(spec):
        properties["GlobalSecondaryIndexes"] = dynamo._indexes(spec)
    properties["TimeToLiveSpecification"] = {"AttributeName": EXPIRES_AT, "Enabled": True}
    properties["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
    return {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain", "Properties": properties}


def policy(specs: list[TableSpec], arn: Callable[[str], Any]) -> dict[str, Any]:
    """Least privilege: the actions the code calls, on its tables (and their indexes) only.
    ``arn(name)`` is the ARN of the table ``name`` (the prefix added)."""
    actions = dynamo_actions()
    unknown = actions - ITEM_ACTIONS - INDEX_ACTIONS - TABLE_ACTIONS
    if unknown:
        raise SystemExit(f"store/dynamo.py calls {sorted(unknown)}: say in "
                         f"{Path(__file__).name} which resources each needs")
    tables = [arn(spec.name) for spec in specs]
    indexed = [arn(spec.name + "/index/*") for spec in specs if dynamo._indexes(spec)]
    statements = [
        {"Sid": "Items", "Effect": "Allow", "Action": sorted(actions & ITEM_ACTIONS),
         "Resource": tables},
        {"Sid": "Indexes", "Effect": "Allow", "Action": sorted(actions & INDEX_ACTIONS),
         "Resource": indexed},
        {"Sid": "Tables", "Effect": "Allow", "Action": sorted(actions & TABLE_ACTIONS),
         "Resource": tables},
    ]
    if "UpdateTimeToLive" in actions:
        statements.append({"Sid": "TtlProbe", "Effect": "Allow", "Action": ["UpdateTimeToLive"],
                           "Resource": [arn(TTL_PROBE)]})
    for statement in statements:
        statement["Action"] = [f"dynamodb:{action}" for action in statement["Action"]]
    return {"Version": "2012-10-17",
            "Statement": [statement for statement in statements if statement["Action"]]}


def template(specs: list[TableSpec]) -> dict[str, Any]:
    def arn(name: str) -> dict[str, str]:
        return {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:"
                           "table/${TablePrefix}" + name}

    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "edge-router: its DynamoDB tables and the IAM policy of its processes. "
                       "Generated by deploy/aws/generate.py from the code; do not edit.",
        "Parameters": {"TablePrefix": {
            "Type": "String", "Default": "edge_", "AllowedPattern": "[A-Za-z0-9_.-]*",
            "Description": "dynamodb_table_prefix of every process (EDGE_DYNAMODB_TABLE_PREFIX)"}},
        "Resources": {
            **{logical_id(spec): table_resource(spec) for spec in specs},
            "EdgeRouterPolicy": {"Type": "AWS::IAM::ManagedPolicy", "Properties": {
                "Description": "What edgectl serve and edgectl shortlinks do with their "
                               "tables, and nothing else",
                "PolicyDocument": policy(specs, arn)}},
        },
        "Outputs": {"PolicyArn": {
            "Description": "Attach to the role of the control replicas and short-link hosts",
            "Value": {"Ref": "EdgeRouterPolicy"}}},
    }


def standalone_policy(specs: list[TableSpec]) -> dict[str, Any]:
    """For a role made elsewhere: replace REGION and ACCOUNT_ID (and edge_, if
    dynamodb_table_prefix differs)."""
    return policy(specs, lambda name: f"arn:aws:dynamodb:REGION:ACCOUNT_ID:table/edge_{name}")


def rendered() -> dict[Path, str]:
    specs = table_specs()
    header = ("# Generated by deploy/aws/generate.py from the code's TableSpecs and the calls of\n"
              "# store/dynamo.py; do not edit (tests/test_deploy.py fails when it is stale).\n")
    return {
        HERE / "tables.yaml": header + yaml.safe_dump(template(specs), sort_keys=False,
                                                      width=100),
        HERE / "iam-policy.json": json.dumps(standalone_policy(specs), indent=2) + "\n",
    }


def main(argv: list[str]) -> int:
    stale = [path for path, text in rendered().items()
             if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python deploy/aws/generate.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
