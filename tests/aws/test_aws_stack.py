"""The deployable stack (deploy/aws): the SAM template passes cfn-lint, states what the
design needs (three streams, the consumer's mappings with bisect-on-error and partial
batch answers, one consumer at a time, least-privilege roles, the alarms, the warehouse
secret), and the functions' package fits the limit of the packaging it uses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("aws-stack")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "aws"
TEMPLATE = DEPLOY / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, errors = decode(str(TEMPLATE))
    assert not errors
    assert decoded is not None
    return dict(decoded)


def resources(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_template_passes_cfn_lint() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-central-1"]))
    assert [str(m) for m in matches] == []


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = TEMPLATE.read_text().replace(
        "ReservedConcurrentExecutions: 1", "ReservedConcurrentExecutions: one"
    )
    broken.write_text(text)
    assert [m.rule.id for m in lint_file(broken)] == ["E3012"]


def test_three_streams_named_as_the_transport_names_them(template: dict[str, Any]) -> None:
    streams = resources(template, "AWS::Kinesis::Stream")
    names = sorted(s["Properties"]["Name"]["Fn::Sub"] for s in streams.values())
    assert names == [
        "${StreamPrefix}-clicks",
        "${StreamPrefix}-conversions",
        "${StreamPrefix}-impressions",
    ]
    url = template["Globals"]["Function"]["Environment"]["Variables"]["ADPULSE_TRANSPORT_URL"]
    assert url == {
        "Fn::Sub": "kinesis://${StreamPrefix}?region=${AWS::Region}&shards=${ShardCount}"
    }


def test_consumer_mappings(template: dict[str, Any]) -> None:
    consumer = template["Resources"]["ConsumerFunction"]["Properties"]
    assert consumer["ImageConfig"]["Command"] == ["adpulse.aws.consumer.handler"]
    assert consumer["ReservedConcurrentExecutions"] == 1
    events = consumer["Events"]
    assert sorted(events) == ["Clicks", "Conversions", "Impressions"]
    for name, event in events.items():
        props = event["Properties"]
        assert event["Type"] == "Kinesis"
        assert props["Stream"] == {"Fn::GetAtt": [f"{name}Stream", "Arn"]}
        assert props["BisectBatchOnFunctionError"] is True
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert props["BatchSize"] == {"Ref": "ConsumerBatchSize"}
        assert props["StartingPosition"] == "TRIM_HORIZON"
        assert props["DestinationConfig"]["OnFailure"]["Destination"] == {
            "Fn::GetAtt": ["ConsumerFailureQueue", "Arn"]
        }
    variables = consumer["Environment"]["Variables"]
    assert variables["ADPULSE_WAREHOUSE_SECRET_ARN"] == {"Ref": "WarehouseSecretArn"}


def test_producer_runs_on_a_schedule(template: dict[str, Any]) -> None:
    producer = template["Resources"]["ProducerFunction"]["Properties"]
    assert producer["ImageConfig"]["Command"] == ["adpulse.aws.producer.handler"]
    schedule = producer["Events"]["Schedule"]
    assert schedule["Type"] == "Schedule"
    assert schedule["Properties"]["Input"] == {
        "Fn::Sub": '{"events": ${ProducerEventsPerInvocation}}'
    }


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_roles_are_least_privilege(template: dict[str, Any]) -> None:
    roles = resources(template, "AWS::IAM::Role")
    assert sorted(roles) == ["ConsumerRole", "ProducerRole"]
    for role in roles.values():
        for statement in _statements(role):
            assert statement["Effect"] == "Allow"
            resource = statement["Resource"]
            assert resource != "*" and "*" not in str(resource), statement
            actions = statement["Action"]
            actions = actions if isinstance(actions, list) else [actions]
            assert all("*" not in a for a in actions), statement
    consumer = {a for s in _statements(roles["ConsumerRole"]) for a in _list(s["Action"])}
    producer = {a for s in _statements(roles["ProducerRole"]) for a in _list(s["Action"])}
    assert "kinesis:PutRecords" in producer and "kinesis:PutRecords" not in consumer
    assert "kinesis:GetRecords" in consumer and "kinesis:GetRecords" not in producer
    assert "secretsmanager:GetSecretValue" in consumer
    assert "secretsmanager:GetSecretValue" not in producer
    for function in ("ConsumerFunction", "ProducerFunction"):
        role = template["Resources"][function]["Properties"]["Role"]
        assert role == {"Fn::GetAtt": [function.replace("Function", "Role"), "Arn"]}


def _list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_alarms_on_iterator_age_and_errors(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    watched = sorted(
        (a["Properties"]["MetricName"], a["Properties"]["Dimensions"][0]["Value"]["Ref"])
        for a in alarms.values()
        if a["Properties"]["Namespace"] == "AWS/Lambda"
    )
    assert watched == [
        ("Errors", "ConsumerFunction"),
        ("Errors", "ProducerFunction"),
        ("IteratorAge", "ConsumerFunction"),
    ]
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}]


def _footprint() -> ModuleType:
    name = "deploy_aws_footprint"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEPLOY / "footprint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def test_package_fits_the_limit_of_its_packaging(template: dict[str, Any]) -> None:
    footprint = _footprint()
    measured = footprint.runtime_footprint()
    # The closure is the real one: the handlers' heavy dependencies are in it.
    assert {"polars", "numpy", "psycopg", "boto3", "pydantic-settings"} <= {
        n.lower() for n in measured.sizes
    }
    kinds = {
        template["Resources"][f]["Properties"]["PackageType"]
        for f in ("ConsumerFunction", "ProducerFunction")
    }
    assert kinds == {"Image"}
    assert measured.total <= footprint.IMAGE_LIMIT
    # Why an image: the runtime closure is over what a zip may unpack to.
    assert measured.total > footprint.ZIP_LIMIT
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM public.ecr.aws/lambda/python:3.12" in dockerfile
    for function in ("ConsumerFunction", "ProducerFunction"):
        meta = template["Resources"][function]["Metadata"]
        assert meta["Dockerfile"] == "deploy/aws/Dockerfile"
        assert (TEMPLATE.parent / meta["DockerContext"] / meta["Dockerfile"]).exists()
