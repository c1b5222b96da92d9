"""The headers every page response carries: a strict Content-Security-Policy (no script at all, no
inline style, nothing from elsewhere), no MIME sniffing, no referrer, no framing."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def content_security_policy(*form_targets: str) -> str:
    """The policy; `form_targets` are origins other than this one that a form may post (or redirect) to,
    which only an identity provider's sign-in page needs."""
    form_action = " ".join(("'self'", *form_targets))
    return (
        f"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action {form_action}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def security_headers(*form_targets: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(*form_targets),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


CONTENT_SECURITY_POLICY = content_security_policy()
SECURITY_HEADERS = security_headers()


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response under `prefix` (to all when it is ""), replacing any a
    route set: a page cannot opt out of the policy."""

    def __init__(self, app: ASGIApp, prefix: str = "") -> None:
        self.app = app
        self.prefix = prefix
        self._raw = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
        self._names = {name for name, _ in self._raw}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == self.prefix or path.startswith(f"{self.prefix}/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self._names]
                message = {**message, "headers": kept + self._raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)
