"""Notifiers: SNS delivery on a local AWS API server (moto) to an SQS queue subscribed to
the topic; the webhook retried and signed; ``adpulse alerts test`` through each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from awstest import REGION, unique_name, use_local_aws
from receiver import SECRET, Receiver
from typer.testing import CliRunner

from adpulse.alerts.notifiers import SnsNotifier, WebhookNotifier
from adpulse.alerts.rules import Alert
from adpulse.cli.main import app


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> str:
    """The local AWS API (moto); its endpoint URL."""
    return use_local_aws(monkeypatch)


def subscribed_queue(endpoint: str) -> tuple[str, str, Any]:
    """A topic and an SQS queue subscribed to it: (topic ARN, queue URL, SQS client)."""
    sns = boto3.client("sns", region_name=REGION, endpoint_url=endpoint)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    topic = sns.create_topic(Name=unique_name("adpulse-alerts"))["TopicArn"]
    queue_url = sqs.create_queue(QueueName=unique_name("ops"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url, sqs


def test_an_alert_published_to_sns_reaches_the_subscribed_queue(aws: str) -> None:
    topic, queue_url, sqs = subscribed_queue(aws)
    alert = Alert("dead_letters", "firing", "40% dead letters", details={"share": 0.4})
    SnsNotifier(topic, REGION, aws).notify(alert)
    messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5)["Messages"]
    assert len(messages) == 1
    envelope = json.loads(messages[0]["Body"])
    assert envelope["TopicArn"] == topic
    assert envelope["Subject"] == "adpulse firing: dead_letters"
    assert json.loads(envelope["Message"]) == alert.to_json()


def test_the_webhook_is_retried_until_the_receiver_answers() -> None:
    receiver = Receiver(fail_first=2)  # 503 twice, then accepted
    try:
        notifier = WebhookNotifier(receiver.url, SECRET.encode())
        notifier.notify(Alert("test", "firing", "hello"))
        notifier.close()
        assert receiver.requests == 3
        assert receiver.seen() == [("test", "firing")]
        assert receiver.bad_signatures == 0
    finally:
        receiver.close()


def test_a_wrong_secret_fails_the_receivers_check() -> None:
    receiver = Receiver()
    try:
        notifier = WebhookNotifier(receiver.url, b"another secret")
        with pytest.raises(Exception, match="401"):
            notifier.notify(Alert("test", "firing", "hello"))
        notifier.close()
        assert (receiver.seen(), receiver.bad_signatures) == ([], 1)
    finally:
        receiver.close()


def test_alerts_test_sends_through_every_notifier_and_says_which_succeeded(
    tmp_path: Path, aws: str
) -> None:
    topic, queue_url, sqs = subscribed_queue(aws)
    receiver = Receiver()
    try:
        (tmp_path / "adpulse.toml").write_text(
            f'alert_webhook_url = "{receiver.url}"\n'
            f'alert_webhook_secret = "{SECRET}"\n'
            f'alert_sns_topic_arn = "{topic}"\n'
            f'alert_sns_endpoint_url = "{aws}"\n'
        )
        result = CliRunner().invoke(app, ["alerts", "test", "--home", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == ["log: sent", "webhook: sent", "sns: sent"]
        assert receiver.seen() == [("test", "firing")]
        messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5)["Messages"]
        assert json.loads(json.loads(messages[0]["Body"])["Message"])["rule"] == "test"

        # a receiver that is gone: the webhook fails, the others still send
        receiver.close()
        result = CliRunner().invoke(app, ["alerts", "test", "--home", str(tmp_path)])
        assert result.exit_code == 1
        lines = result.output.splitlines()
        assert lines[0] == "log: sent"
        assert lines[1].startswith(f"webhook: FAILED: RuntimeError: the webhook {receiver.url}")
        assert lines[2] == "sns: sent"
    finally:
        receiver.server.server_close()
