"""Signing in to the pages: the development issuer's code flow (PKCE S256 verified, codes spent once,
bound to their client and redirect URI), the client's checks of state and nonce, and the session
cookie's signature and lifetime."""

from __future__ import annotations

import time

import httpx
import pytest

from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator
from fivesafes_tes.auth.issuer import DevPerson, InvalidGrant
from fivesafes_tes.auth.pkce import pkce_challenge
from fivesafes_tes.web import Endpoints, LoginFailed, OidcClient, SessionCookies, WebSession
from tests.web import tre_site

VERIFIER = "v" * 43
ADMIN = DevPerson("uk-tre-admin", ("tre-admin",), "uk-tre")
CALLBACK = "http://127.0.0.1:9/auth/callback"


@pytest.fixture
def issuer(tmp_path) -> DevIssuer:
    return DevIssuer(tmp_path / "idp", "https://idp.example/dev-issuer")


def _code(issuer: DevIssuer, nonce: str | None = "n-1") -> str:
    return issuer.grant(
        ADMIN,
        client_id="fivesafes-tre",
        redirect_uri=CALLBACK,
        code_challenge=pkce_challenge(VERIFIER),
        nonce=nonce,
    )


def test_a_code_is_exchanged_for_tokens_of_the_person_picked(issuer):
    tokens = issuer.redeem(
        _code(issuer), client_id="fivesafes-tre", redirect_uri=CALLBACK, code_verifier=VERIFIER
    )
    validator = TokenValidator(issuer.issuer_url, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])
    access = validator.validate(tokens["access_token"])
    identity = validator.validate(tokens["id_token"])
    assert (access.username, access.roles, access.tre) == ("uk-tre-admin", frozenset({"tre-admin"}), "uk-tre")
    assert identity.raw["nonce"] == "n-1"


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "verifier", "why"),
    [
        ("fivesafes-tre", CALLBACK, "w" * 43, "code_verifier does not match"),
        ("fivesafes-tre", CALLBACK, "", "code_verifier does not match"),
        ("fivesafes-tre", CALLBACK, pkce_challenge(VERIFIER), "code_verifier does not match"),
        ("other-client", CALLBACK, VERIFIER, "another client"),
        ("fivesafes-tre", "http://127.0.0.1:9/elsewhere", VERIFIER, "another client or redirect_uri"),
    ],
)
def test_a_code_exchange_that_does_not_match_its_grant_is_refused_and_spends_the_code(
    issuer, client_id, redirect_uri, verifier, why
):
    code = _code(issuer)
    with pytest.raises(InvalidGrant, match=why):
        issuer.redeem(code, client_id=client_id, redirect_uri=redirect_uri, code_verifier=verifier)
    with pytest.raises(InvalidGrant, match="unknown, spent or expired"):
        issuer.redeem(code, client_id="fivesafes-tre", redirect_uri=CALLBACK, code_verifier=VERIFIER)


def test_a_code_is_spent_by_its_first_exchange_and_expires(issuer, monkeypatch):
    code = _code(issuer)
    issuer.redeem(code, client_id="fivesafes-tre", redirect_uri=CALLBACK, code_verifier=VERIFIER)
    with pytest.raises(InvalidGrant):
        issuer.redeem(code, client_id="fivesafes-tre", redirect_uri=CALLBACK, code_verifier=VERIFIER)
    late = _code(issuer)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    with pytest.raises(InvalidGrant, match="expired"):
        issuer.redeem(late, client_id="fivesafes-tre", redirect_uri=CALLBACK, code_verifier=VERIFIER)


def test_the_issuer_routes_speak_oauth(tmp_path):
    with tre_site(tmp_path) as site:
        base = f"{site.gateway_url}/dev-issuer"
        discovery = httpx.get(f"{base}/.well-known/openid-configuration").json()
        assert discovery["authorization_endpoint"] == f"{base}/authorize"
        assert discovery["code_challenge_methods_supported"] == ["S256"]
        assert httpx.get(f"{base}/jwks.json").json()["keys"]
        query = {
            "response_type": "code",
            "client_id": "fivesafes-tre",
            "redirect_uri": CALLBACK,
            "state": "s",
            "code_challenge": pkce_challenge(VERIFIER),
        }
        plain = httpx.get(f"{base}/authorize", params={**query, "code_challenge_method": "plain"})
        assert plain.status_code == 400
        assert "PKCE is required" in plain.text
        for sneaky in (
            "http://a.example;script-src *@evil/cb",
            "http://user@a.example/cb",
            "javascript:alert(1)",
            "http://a.example/cb#frag",
        ):
            refused = httpx.get(
                f"{base}/authorize", params={**query, "redirect_uri": sneaky, "code_challenge_method": "S256"}
            )
            assert refused.status_code == 400, sneaky
        page = httpx.get(f"{base}/authorize", params={**query, "code_challenge_method": "S256"})
        assert page.status_code == 200
        assert "form-action 'self' http://127.0.0.1:9;" in page.headers["content-security-policy"]
        nobody = httpx.post(
            f"{base}/authorize", data={**query, "code_challenge_method": "S256", "person": "mallory"}
        )
        assert nobody.status_code == 400
        back = httpx.post(
            f"{base}/authorize", data={**query, "code_challenge_method": "S256", "person": "alice"}
        )
        assert back.status_code == 303
        code = httpx.URL(back.headers["location"]).params["code"]
        exchange = {"grant_type": "authorization_code", "code": code, "client_id": "fivesafes-tre"}
        wrong = httpx.post(
            f"{base}/token", data={**exchange, "redirect_uri": CALLBACK, "code_verifier": "x" * 43}
        )
        assert wrong.status_code == 400
        assert wrong.json()["error"] == "invalid_grant"
        assert httpx.post(f"{base}/token", data={**exchange, "grant_type": "password"}).json()["error"] == (
            "unsupported_grant_type"
        )


def test_a_sign_in_whose_id_token_has_another_nonce_is_refused(tmp_path):
    with tre_site(tmp_path) as site:
        validator = TokenValidator(
            site.issuer.issuer_url, "fivesafes-tre", StaticJwks(site.issuer.jwks()), ["RS256"]
        )
        base = f"{site.gateway_url}/dev-issuer"
        client = OidcClient(
            validator, "fivesafes-tre", CALLBACK, endpoints=Endpoints(f"{base}/authorize", f"{base}/token")
        )
        _, login = client.begin("/")
        for nonce in ("someone-else's", None):
            code = site.issuer.grant(
                ADMIN,
                client_id="fivesafes-tre",
                redirect_uri=CALLBACK,
                code_challenge=pkce_challenge(login.verifier),
                nonce=nonce,
            )
            with pytest.raises(LoginFailed, match="not for this sign-in"):
                client.finish(login, login.state, code)
        code = site.issuer.grant(
            ADMIN,
            client_id="fivesafes-tre",
            redirect_uri=CALLBACK,
            code_challenge=pkce_challenge(login.verifier),
            nonce=login.nonce,
        )
        assert client.finish(login, login.state, code).username == "uk-tre-admin"


def test_a_session_cookie_is_signed_and_ends_with_its_lifetime(monkeypatch):
    cookies = SessionCookies(b"k" * 32, 60, secure=False)
    other = SessionCookies(b"j" * 32, 60, secure=False)
    me = WebSession("https://idp.example", "sub-1", "dora", frozenset({"tre-admin"}), "uk-tre", "c" * 43)
    from starlette.responses import Response

    response = Response()
    cookies.start_session(response, me)
    value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    assert cookies.session({cookies.session_name: value}) == me
    assert other.session({cookies.session_name: value}) is None
    tampered = value.replace("dora", "root") if "dora" in value else value[:-2] + "xx"
    assert cookies.session({cookies.session_name: tampered}) is None
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert cookies.session({cookies.session_name: value}) is None
