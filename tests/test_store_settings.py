"""Every setting of an object store reaches the store it configures: each environment variable of the
gateway's results store (`FIVESAFES_RESULTS_*`) and of a TRE's airlock (`FIVESAFES_AGENT_AIRLOCK_*`)
changes what the store built from the settings does, through the same path the processes take."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.egress.store import MiB, ObjectStore
from fivesafes_tes.gateway.app import create_app
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.settings import (
    AgentSettings,
    GatewaySettings,
    drop_secrets_from_environment,
    environment_variables,
)


def _config(store: ObjectStore) -> Any:
    return store._client.meta.config


def _credentials(store: ObjectStore) -> Any:
    return store._client._request_signer._credentials


# Each field: a value no default has, and how to read back what the store uses.
USED: dict[str, tuple[str, Callable[[ObjectStore], object], object]] = {
    "ENDPOINT_URL": ("http://s3.tre.example:9000", lambda s: s._client.meta.endpoint_url, None),
    "BUCKET": ("outputs-7", lambda s: s.bucket, None),
    "ACCESS_KEY": ("AKIA-TEST-7", lambda s: _credentials(s).access_key, None),
    "SECRET_KEY": ("canary-secret-7", lambda s: _credentials(s).secret_key, None),
    "REGION": ("eu-west-2", lambda s: s._client.meta.region_name, None),
    "ADDRESSING_STYLE": ("virtual", lambda s: _config(s).s3["addressing_style"], None),
    "CONNECT_TIMEOUT_S": ("7.5", lambda s: _config(s).connect_timeout, 7.5),
    "READ_TIMEOUT_S": ("77", lambda s: _config(s).read_timeout, 77.0),
    "MAX_ATTEMPTS": ("9", lambda s: _config(s).retries["total_max_attempts"], 9),
    "NATIVE_CHECKSUMS": ("false", lambda s: s._native_checksums, False),
    "CONDITIONAL_WRITES": ("false", lambda s: s._conditional_writes, False),
    "MULTIPART_THRESHOLD": (str(40 * MiB), lambda s: s._multipart_threshold, 40 * MiB),
    "PART_SIZE": (str(6 * MiB), lambda s: s._part_size, 6 * MiB),
    "MAX_CONCURRENCY": ("11", lambda s: s._max_concurrency, 11),
}


def _gateway_results_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ObjectStore:
    """The results store as `fivesafes-tes gateway` builds it from its environment."""
    monkeypatch.setenv("FIVESAFES_DEV_ISSUER", "true")
    monkeypatch.setenv("FIVESAFES_DATA_DIR", str(tmp_path))
    store = app_context(create_app(GatewaySettings())).results_store
    assert store is not None
    return store


def _agent_airlock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ObjectStore:
    """The airlock as `fivesafes-tes agent` builds it from its environment."""
    monkeypatch.setenv("FIVESAFES_AGENT_TRE", "tre-a")
    monkeypatch.setenv("FIVESAFES_AGENT_TOKEN", "agent-token")
    monkeypatch.setenv("FIVESAFES_AGENT_EXECUTOR", "local")
    monkeypatch.setenv("FIVESAFES_AGENT_DATA_DIR", str(tmp_path))
    agent = Agent.from_settings(AgentSettings())  # type: ignore[call-arg]
    agent.db.dispose()
    return agent.store


SIDES = {
    "FIVESAFES_RESULTS_": (GatewaySettings, _gateway_results_store),
    "FIVESAFES_AGENT_AIRLOCK_": (AgentSettings, _agent_airlock),
}


@pytest.mark.parametrize("prefix", SIDES)
def test_every_store_field_has_a_variable_and_a_check_here(prefix: str) -> None:
    settings, _ = SIDES[prefix]
    variables = {
        name.removeprefix(prefix) for name in environment_variables(settings) if name.startswith(prefix)
    }
    assert variables == set(USED)


@pytest.mark.parametrize("field", USED)
@pytest.mark.parametrize("prefix", SIDES)
def test_each_variable_reaches_the_store(
    prefix: str, field: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, build = SIDES[prefix]
    value, used, parsed = USED[field]
    # a results store exists only with an endpoint or an access key
    monkeypatch.setenv(f"{prefix}ACCESS_KEY", "AKIA-ANY")
    monkeypatch.setenv(f"{prefix}SECRET_KEY", "any-secret")
    monkeypatch.setenv(f"{prefix}{field}", value)
    store = build(monkeypatch, tmp_path)
    assert used(store) == (value if parsed is None else parsed)


def test_the_results_store_keeps_its_older_variables_and_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FIVESAFES_RESULTS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("FIVESAFES_RESULTS_ACCESS_KEY", "AKIA-ANY")
    monkeypatch.setenv("FIVESAFES_RESULTS_SECRET_KEY", "any-secret")
    store = _gateway_results_store(monkeypatch, tmp_path)
    assert (store.bucket, store.region, store._multipart_threshold) == ("results", "us-east-1", 16 * MiB)


def test_no_results_store_without_an_endpoint_or_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FIVESAFES_RESULTS_BUCKET", "outputs")
    monkeypatch.setenv("FIVESAFES_DEV_ISSUER", "true")
    monkeypatch.setenv("FIVESAFES_DATA_DIR", str(tmp_path))
    assert app_context(create_app(GatewaySettings())).results_store is None


def test_a_bad_value_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIVESAFES_AGENT_TRE", "tre-a")
    monkeypatch.setenv("FIVESAFES_AGENT_AIRLOCK_PART_SIZE", "1024")
    with pytest.raises(ValueError, match=r"airlock\.part_size"):
        AgentSettings()  # type: ignore[call-arg]


def test_the_airlock_secret_leaves_the_agents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIVESAFES_AGENT_TRE", "tre-a")
    monkeypatch.setenv("FIVESAFES_AGENT_AIRLOCK_SECRET_KEY", "canary-secret-7")
    settings = AgentSettings()  # type: ignore[call-arg]
    assert "FIVESAFES_AGENT_AIRLOCK_SECRET_KEY" in drop_secrets_from_environment(settings)
    assert settings.airlock.secret_key is not None
    assert settings.airlock.secret_key.get_secret_value() == "canary-secret-7"
    assert "FIVESAFES_AGENT_AIRLOCK_SECRET_KEY" not in os.environ
