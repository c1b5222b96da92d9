"""The agent's only connection to the gateway: outbound HTTPS, retried with backoff."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from fivesafes_tes.egress.held import HeldFile

if TYPE_CHECKING:
    from fivesafes_tes.settings import AgentSettings

log = logging.getLogger(__name__)


class Rejected(Exception):
    """The gateway refused the message (4xx); retrying the same message will not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class GatewayClient:
    def __init__(
        self,
        url: str,
        token: Callable[[], str],
        *,
        timeout_s: float = 10.0,
        max_backoff_s: float = 30.0,
        upload_timeout_s: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._token = token
        self._max_backoff_s = max_backoff_s
        self._upload_timeout_s = upload_timeout_s
        self._closed = threading.Event()
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/agent/v1", timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> GatewayClient:
        """The client an agent with these settings uses: its gateway, token and timeouts."""
        return cls(
            settings.gateway_url,
            cls.token_from(
                settings.token.get_secret_value() if settings.token else None, settings.token_file
            ),
            timeout_s=settings.gateway_timeout_s,
            max_backoff_s=settings.gateway_max_backoff_s,
            upload_timeout_s=settings.gateway_upload_timeout_s,
        )

    @staticmethod
    def token_from(token: str | None, token_file: Path | None) -> Callable[[], str]:
        if token_file is not None:
            return lambda: token_file.read_text().strip()
        if token:
            return lambda: token
        raise ValueError("the agent needs a token: set FIVESAFES_AGENT_TOKEN or FIVESAFES_AGENT_TOKEN_FILE")

    def close(self) -> None:
        """Stop retrying and end the connection; calls in progress give up with ConnectionError."""
        self._closed.set()
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        content_factory: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Retry connection errors, 5xx and 429 with jittered backoff; raise Rejected on any other 4xx.
        Every agent route answers with a JSON object."""
        delay = 0.2
        while True:
            if self._closed.is_set():
                raise ConnectionError("the agent is shutting down")
            try:
                if content_factory is not None:  # a fresh stream for every try
                    kwargs["content"] = content_factory()
                response = self._http.request(
                    method, path, headers={"Authorization": f"Bearer {self._token()}"}, **kwargs
                )
                if response.status_code < 400:
                    answer: dict[str, Any] = response.json()
                    return answer
                if response.status_code < 500 and response.status_code != 429:
                    try:
                        detail = response.json().get("detail", response.text)
                    except ValueError:
                        detail = response.text
                    raise Rejected(response.status_code, str(detail))
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            except RuntimeError:  # httpx: "the client has been closed", by close() in another thread
                raise ConnectionError("the agent is shutting down") from None
            if not retry or self._closed.is_set():
                raise ConnectionError(f"gateway unavailable ({problem})")
            log.warning("gateway %s %s: %s; retrying in %.1fs", method, path, problem, delay)
            if self._closed.wait(delay):
                raise ConnectionError("the agent is shutting down")
            delay = min(self._max_backoff_s, delay * 2) * (0.8 + 0.4 * random.random())

    def lease(self, wait_s: float, max_items: int = 10) -> dict[str, Any]:
        return self._call(
            "POST",
            "/leases",
            json={"wait_s": wait_s, "max": max_items},
            timeout=httpx.Timeout(wait_s + 15, connect=10),
        )

    def heartbeat(self, held: list[tuple[str, int]]) -> dict[str, str]:
        body = {"children": [{"child_id": c, "attempt": a} for c, a in held]}
        children: dict[str, str] = self._call("POST", "/heartbeat", json=body)["children"]
        return children

    def event(
        self,
        child_id: str,
        attempt: int,
        seq: int,
        stage: str,
        message: str | None,
        report: dict[str, Any] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"attempt": attempt, "seq": seq, "stage": stage}
        if message:
            body["message"] = message
        if report:
            body["report"] = report
        return self._call("POST", f"/children/{child_id}/events", json=body)

    def record_approvals(self, child_id: str, files: list[HeldFile]) -> dict[str, Any]:
        """Record the child's approved files at the gateway before any upload; the same list again is
        a no-op, so a restarted release repeats it safely."""
        described = [f.described() for f in files]
        return self._call("PUT", f"/children/{child_id}/approvals", json={"files": described})

    def upload_file(self, child_id: str, file: HeldFile) -> dict[str, Any]:
        """Stream one approved file from its local copy to the gateway, which keeps it only if the
        SHA-256 matches."""
        params = {k: v for k, v in file.described().items() if v is not None}
        path = file.path

        def body() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        return self._call(
            "PUT",
            f"/children/{child_id}/files",
            params=params,
            content_factory=body,
            timeout=httpx.Timeout(self._upload_timeout_s, connect=10),
        )

    def cancel_ack(self, child_id: str) -> None:
        self._call("POST", f"/children/{child_id}/cancel-ack")

    def sync(self) -> dict[str, Any]:
        return self._call("GET", "/sync")

    def publish_policy(self, admission: dict[str, Any]) -> bool:
        """Tell the gateway what this TRE will run (`tes.admission.Admission`); whether it changed."""
        return bool(self._call("PUT", "/policy", json=admission)["changed"])

    def push_decisions(self, decisions: list[dict[str, Any]]) -> None:
        self._call("POST", "/decisions", json={"decisions": decisions})
