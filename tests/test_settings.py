"""Operators tune the agent's and gateway's timing through settings: each reaches its use, and a
contradictory combination is refused at start with the fields named."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from pydantic import ValidationError

from fivesafes_tes.agent.client import GatewayClient
from fivesafes_tes.gateway.app import _deliverer
from fivesafes_tes.settings import AgentSettings, GatewaySettings
from fivesafes_tes.submission.deliveries import DeliveryLoop


def test_the_delivery_poll_and_retry_cap_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FIVESAFES_DELIVERY_POLL_S", "2")
    monkeypatch.setenv("FIVESAFES_DELIVERY_RETRY_CAP_S", "120")
    settings = GatewaySettings(data_dir=tmp_path, delivery_buckets=["out"])
    deliverer = _deliverer(settings, db=None, store=object())  # type: ignore[arg-type]
    assert deliverer is not None
    assert (deliverer.schedule.poll_s, deliverer.schedule.retry_cap_s) == (2.0, 120.0)
    assert DeliveryLoop(deliverer)._poll_s == 2.0


def test_a_retry_cap_below_the_first_retry_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="delivery_retry_cap_s must be at least delivery_retry_s"):
        GatewaySettings(data_dir=tmp_path, delivery_retry_s=60, delivery_retry_cap_s=30)
    with pytest.raises(ValidationError, match="retry_cap_s must be at least child_retry_s"):
        AgentSettings(tre="uk-tre", data_dir=tmp_path, child_retry_s=10, retry_cap_s=5)
    with pytest.raises(ValidationError, match="greater than 0"):
        AgentSettings(tre="uk-tre", data_dir=tmp_path, gateway_timeout_s=0)


REACH_TWICE = (
    "from fivesafes_tes import failpoints; failpoints.reach('p'); print('once'); failpoints.reach('p')"
)


@pytest.mark.parametrize(("plan", "killed"), [("p:2", True), ("other", False), ("", False)])
def test_a_failpoint_kills_the_process_only_when_the_environment_asks(plan, killed, monkeypatch):
    monkeypatch.setenv("FIVESAFES_FAILPOINTS", plan)
    done = subprocess.run([sys.executable, "-c", REACH_TWICE], capture_output=True, text=True, check=False)
    assert done.stdout == "once\n"
    assert done.returncode == (-signal.SIGKILL if killed else 0)


def test_the_agents_gateway_timeouts_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FIVESAFES_AGENT_GATEWAY_TIMEOUT_S", "3")
    monkeypatch.setenv("FIVESAFES_AGENT_GATEWAY_UPLOAD_TIMEOUT_S", "1800")
    client = GatewayClient.from_settings(AgentSettings(tre="uk-tre", data_dir=tmp_path, token="t"))
    try:
        assert client._http.timeout.read == 3.0
        assert client._upload_timeout_s == 1800.0
    finally:
        client.close()
