"""A small TES client for the CLI and the demo: the same HTTP any workflow engine speaks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

import httpx

TES_PATH = "/ga4gh/tes/v1"


class ClientError(RuntimeError):
    """The gateway refused the request; the message is the gateway's own explanation."""


class TesClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/") + TES_PATH, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (Any: its shape is the TES schema's, which callers name)."""
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ClientError(f"{response.status_code}: {detail}")
        return response.json()

    def service_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._call("GET", "/service-info")
        return info

    def create(self, task: dict[str, Any], *, idempotency_key: str | None = None) -> str:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        task_id: str = self._call("POST", "/tasks", json=task, headers=headers)["id"]
        return task_id

    def get(self, task_id: str, view: str = "MINIMAL") -> dict[str, Any]:
        task: dict[str, Any] = self._call("GET", f"/tasks/{task_id}", params={"view": view})
        return task

    def cancel(self, task_id: str) -> None:
        self._call("POST", f"/tasks/{task_id}:cancel")

    def list(
        self, *, view: str = "MINIMAL", page_size: int = 256, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Every matching task, following next_page_token to the end."""
        params: dict[str, Any] = {"view": view, "page_size": page_size}
        params.update({k: v for k, v in filters.items() if v not in (None, [], "")})
        while True:
            page = self._call("GET", "/tasks", params=params)
            yield from page["tasks"]
            if not page.get("next_page_token"):
                return
            params["page_token"] = page["next_page_token"]
