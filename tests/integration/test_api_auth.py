"""Authentication of the HTTPS API, end to end: the token table on SQLite and PostgreSQL, the
Authenticator (API tokens with its cache; OIDC JWTs from a JWKS file and from a real local
HTTPS JWKS server signed by the throwaway test CA), and the token routes.

Keys are made here (RSA and EC, ``cryptography``); nothing is read from outside the repository.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.auth import Authenticator, issue_token
from api.problems import install_problem_handlers
from api.tokens import router
from core.api_config import OidcConfig
from core.auth import AuthError, Principal, Scope, parse_token
from core.errors import ConfigError, DependencyUnavailable
from core.types import AuditEventType
from demo.orthanc import free_port
from state.ledger import Ledger, open_ledger
from tests.fakes import FakeClock
from tests.pki import Pki

pytestmark = pytest.mark.integration

ISSUER = "https://idp.hospital.test/realms/radiology"
AUDIENCE = "pacsai-api"


@pytest.fixture
def ledger(backend: str, storage_for: Callable[..., Any]) -> Iterator[Ledger]:
    led = open_ledger(storage_for(backend))
    yield led
    led.close()


@pytest.fixture
def sqlite_ledger(storage_for: Callable[..., Any]) -> Iterator[Ledger]:
    led = open_ledger(storage_for("sqlite"))
    yield led
    led.close()


def bearer(text: str) -> str:
    return f"Bearer {text}"


def refused(auth: Authenticator, header: str | None) -> str:
    with pytest.raises(AuthError) as caught:
        auth.authenticate(header)
    assert caught.value.status == 401
    return caught.value.detail


# ------------------------------------------------------------------------ the token table
def test_tokens_are_stored_listed_and_revoked_with_an_audit_and_no_secret(ledger: Ledger):
    text, record = issue_token(ledger.tokens, "pacs-gateway", ["ingest"], 5000.0, "token:root", 1000.0)
    _, older = issue_token(ledger.tokens, "ops", [Scope.OPERATE, Scope.READ], None, "oidc:alice", 900.0)
    stored, secret_hash = ledger.tokens.get(record.token_id)  # type: ignore[misc]
    assert stored == record and record.created_by == "token:root"
    assert secret_hash == hashlib.sha256(parse_token(text)[1].encode()).hexdigest()
    assert ledger.tokens.get("ffffffffffffffff") is None
    assert ledger.tokens.list() == (older, record)

    revoked = ledger.tokens.revoke(record.token_id, "oidc:alice", 2000.0)
    assert revoked.revoked_at == 2000.0 and ledger.tokens.get(record.token_id)[0] == revoked  # type: ignore[index]
    assert ledger.tokens.list() == (older,)
    assert ledger.tokens.list(include_revoked=True) == (older, revoked)
    assert ledger.tokens.revoke(record.token_id, "oidc:bob", 3000.0) == revoked  # already revoked: unchanged

    events = [e for e in ledger.audit.events() if e.type.startswith("api_token")]
    assert [(e.type, e.actor, e.detail["name"]) for e in events] == [
        (AuditEventType.API_TOKEN_CREATED, "token:root", "pacs-gateway"),
        (AuditEventType.API_TOKEN_CREATED, "oidc:alice", "ops"),
        (AuditEventType.API_TOKEN_REVOKED, "oidc:alice", "pacs-gateway"),
    ]
    assert events[0].detail == {
        "token_id": record.token_id,
        "name": "pacs-gateway",
        "scopes": ["ingest"],
        "expires_at": 5000.0,
    }
    trail = json.dumps([e.detail for e in ledger.audit.events()])
    assert parse_token(text)[1] not in trail and secret_hash not in trail
    assert ledger.audit.verify() is None


def test_revoking_an_unknown_token_says_so(ledger: Ledger):
    with pytest.raises(KeyError, match="unknown"):
        ledger.tokens.revoke("0000000000000000", "token:root", 1.0)


def test_issuing_refuses_bad_requests_before_storing_anything(ledger: Ledger):
    with pytest.raises(ValueError, match="got unknown 'root'"):
        issue_token(ledger.tokens, "x", ["root"], None, "token:a", 10.0)
    with pytest.raises(ValueError, match="expires_at"):
        issue_token(ledger.tokens, "x", ["read"], 10.0, "token:a", 10.0)
    with pytest.raises(ValueError, match="name"):
        issue_token(ledger.tokens, "has space", ["read"], None, "token:a", 10.0)
    assert ledger.tokens.list(include_revoked=True) == ()


# ------------------------------------------------------------------ API tokens end to end
def test_a_valid_token_authenticates_and_its_record_is_cached(ledger: Ledger):
    clock = FakeClock()
    auth = Authenticator(ledger.tokens, None, clock.now, cache_s=5.0)
    text, record = issue_token(ledger.tokens, "pacs-gateway", ["ingest"], None, "token:root", clock.now())
    reads = []
    load = ledger.tokens.get
    ledger.tokens.get = lambda token_id: reads.append(token_id) or load(token_id)  # type: ignore[method-assign]

    principal = auth.authenticate(bearer(text))
    assert principal == Principal("token:pacs-gateway", frozenset({Scope.INGEST}), "token", record.token_id)
    assert auth.authenticate(f"bearer  {text} ") == principal  # RFC 7235: the scheme is case-insensitive
    assert reads == [record.token_id]
    clock.advance(5.0)
    auth.authenticate(bearer(text))
    assert len(reads) == 2


def test_a_token_without_scopes_authenticates_but_may_do_nothing(ledger: Ledger):
    text, _ = issue_token(ledger.tokens, "nobody", [], None, "token:root", 10.0)
    principal = Authenticator(ledger.tokens, None, FakeClock().now).authenticate(bearer(text))
    assert principal.scopes == frozenset() and not any(principal.may(s) for s in Scope)


def test_a_wrong_secret_is_refused_without_echoing_it(ledger: Ledger):
    auth = Authenticator(ledger.tokens, None, FakeClock().now)
    text, _ = issue_token(ledger.tokens, "gw", ["read"], None, "token:root", FakeClock().now())
    wrong = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    detail = refused(auth, bearer(wrong))
    assert "not recognised" in detail and wrong not in detail and text not in detail
    assert refused(auth, bearer("pab_0123456789abcdef_" + "A" * 43)) == detail  # unknown id: same answer


def test_an_expired_token_is_refused_even_while_cached(ledger: Ledger):
    clock = FakeClock()
    auth = Authenticator(ledger.tokens, None, clock.now, cache_s=600.0)
    text, _ = issue_token(ledger.tokens, "short", ["read"], clock.now() + 60, "token:root", clock.now())
    auth.authenticate(bearer(text))
    clock.advance(60)
    assert "expired at" in refused(auth, bearer(text))


def test_a_revoked_token_stops_working_once_the_cache_lapses(ledger: Ledger):
    clock = FakeClock()
    auth = Authenticator(ledger.tokens, None, clock.now, cache_s=5.0)
    text, record = issue_token(ledger.tokens, "gw", ["read"], None, "token:root", clock.now())
    auth.authenticate(bearer(text))
    ledger.tokens.revoke(record.token_id, "token:root", clock.now())  # e.g. by another replica
    clock.advance(4.9)
    assert auth.authenticate(bearer(text)).subject == "token:gw"  # the documented delay
    clock.advance(0.1)
    assert "revoked" in refused(auth, bearer(text))


def test_forget_applies_a_revocation_at_once(ledger: Ledger):
    clock = FakeClock()
    auth = Authenticator(ledger.tokens, None, clock.now, cache_s=60.0)
    text, record = issue_token(ledger.tokens, "gw", ["read"], None, "token:root", clock.now())
    auth.authenticate(bearer(text))
    ledger.tokens.revoke(record.token_id, "token:root", clock.now())
    auth.forget(record.token_id)
    assert "revoked" in refused(auth, bearer(text))


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("Basic dXNlcjpwdw==", "got 'Basic'; expected 'Bearer"),
        ("pab_0123456789abcdef_" + "A" * 43, "got no scheme; expected 'Bearer"),
        ("Token pab_0123456789abcdef_" + "A" * 43, "got 'Token'; expected 'Bearer"),
        ("Bearer", "without a credential"),
        ("Bearer    ", "without a credential"),
        ("Bearer pab_0123", "malformed API token"),
        ("Bearer pab_0123456789abcdef_short", "malformed API token"),
        ("Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "OIDC is not configured"),
    ],
)
def test_missing_or_malformed_credentials_are_a_401(sqlite_ledger: Ledger, header: str | None, says: str):
    detail = refused(Authenticator(sqlite_ledger.tokens, None), header)
    assert says in detail
    assert "AAAA" not in detail and "dXNl" not in detail  # a credential is never echoed


# ------------------------------------------------------------------------------- OIDC
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Idp:
    """A throwaway identity provider: an RSA (RS256) and an EC P-256 (ES256, alg inferred) key."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        self.jwks = {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                {**ec_jwk, "kid": "ec-1", "use": "sig"},
            ]
        }

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "scope": "read"}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, kid: str = "rsa-1", **changes: Any) -> str:
        key, alg = (self.rsa, "RS256") if kid.startswith("rsa") else (self.ec, "ES256")
        return jwt.encode(self.claims(**changes), key, algorithm=alg, headers={"kid": kid})

    def forged(self, alg: str, secret: bytes, kid: str = "rsa-1") -> str:
        """A JWT signed by hand (PyJWT refuses to make these): ``none`` or HMAC with ``secret``."""
        head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        body = b64(json.dumps(self.claims(scope="admin")).encode())
        signing_input = f"{head}.{body}".encode()
        signature = b"" if alg == "none" else hmac.new(secret, signing_input, hashlib.sha256).digest()
        return f"{head}.{body}.{b64(signature)}"

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture
def jwks_file(idp: Idp, tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks))
    return str(path)


def oidc(**fields: Any) -> OidcConfig:
    return OidcConfig(issuer=ISSUER, audience=AUDIENCE, **fields)


@pytest.fixture
def file_auth(sqlite_ledger: Ledger, jwks_file: str) -> Authenticator:
    return Authenticator(sqlite_ledger.tokens, oidc(jwks_file=jwks_file))


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
def test_a_valid_jwt_names_its_subject_and_scopes(file_auth: Authenticator, idp: Idp, kid: str):
    principal = file_auth.authenticate(bearer(idp.sign(kid, scope="openid read ingest")))
    assert principal == Principal("oidc:alice", frozenset({Scope.READ, Scope.INGEST}), "oidc")


def test_scopes_may_come_as_a_list_in_a_claim_of_the_sites_choice(sqlite_ledger: Ledger, idp: Idp, jwks_file: str):
    cfg = oidc(jwks_file=jwks_file, scopes_claim="roles", subject_claim="preferred_username")
    auth = Authenticator(sqlite_ledger.tokens, cfg)
    token = idp.sign(roles=["operate", "offline_access", 7], preferred_username="dr.bob")
    assert auth.authenticate(bearer(token)) == Principal("oidc:dr.bob", frozenset({Scope.OPERATE}), "oidc")
    assert auth.authenticate(bearer(token)).claims["roles"] == ["operate", "offline_access", 7]  # for the alert policy
    assert "'preferred_username'" in refused(auth, bearer(idp.sign(roles=["read"])))


def test_a_jwt_granting_none_of_our_scopes_authenticates_but_may_do_nothing(file_auth: Authenticator, idp: Idp):
    principal = file_auth.authenticate(bearer(idp.sign(scope="openid email")))
    assert principal.scopes == frozenset() and not principal.may(Scope.READ)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"aud": "another-api"}, "audience (aud)"),
        ({"iss": "https://evil.test"}, "issuer (iss)"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"exp": None}, "'exp'"),
        ({"aud": None}, "'aud'"),
        ({"iss": None}, "'iss'"),
    ],
)
def test_jwt_claims_are_checked(file_auth: Authenticator, idp: Idp, changes: dict[str, Any], says: str):
    assert says in refused(file_auth, bearer(idp.sign(**changes)))


def test_the_leeway_tolerates_clock_skew(file_auth: Authenticator, idp: Idp):
    assert file_auth.authenticate(bearer(idp.sign(exp=int(time.time()) - 10))).subject == "oidc:alice"


def test_an_unknown_kid_is_refused(file_auth: Authenticator, idp: Idp):
    token = jwt.encode(idp.claims(), idp.rsa, algorithm="RS256", headers={"kid": "rotated-away"})
    assert "no such signing key" in refused(file_auth, bearer(token))


def test_a_jwt_signed_by_another_key_is_refused(file_auth: Authenticator, idp: Idp):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(idp.claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    assert "signature does not verify" in refused(file_auth, bearer(token))


def test_alg_none_is_refused(file_auth: Authenticator, idp: Idp):
    assert "JWT alg: got 'none'" in refused(file_auth, bearer(idp.forged("none", b"")))


def test_hs256_signed_with_the_public_key_is_refused(sqlite_ledger: Ledger, idp: Idp, jwks_file: str):
    """Algorithm confusion: the public key used as an HMAC secret would let anyone sign."""
    auth = Authenticator(sqlite_ledger.tokens, oidc(jwks_file=jwks_file))
    assert "JWT alg: got 'HS256'" in refused(auth, bearer(idp.forged("HS256", idp.public_pem())))
    smuggled = OidcConfig.model_construct(**{**oidc(jwks_file=jwks_file).model_dump(), "algorithms": ("HS256",)})
    with pytest.raises(ConfigError, match="RS\\*, ES\\* or PS\\* only"):
        Authenticator(sqlite_ledger.tokens, smuggled)


def test_a_key_verifies_only_with_its_own_algorithm(file_auth: Authenticator, idp: Idp):
    token = jwt.encode(idp.claims(), idp.rsa, algorithm="PS256", headers={"kid": "rsa-1"})
    assert "does not match its signing key" in refused(file_auth, bearer(token))


def test_garbage_is_neither_a_token_nor_a_jwt(file_auth: Authenticator):
    assert "nor a well-formed JWT" in refused(file_auth, bearer("not-a-jwt"))


def test_a_jwt_without_kid_needs_a_single_key(sqlite_ledger: Ledger, idp: Idp, tmp_path: Path):
    token = jwt.encode(idp.claims(), idp.ec, algorithm="ES256")
    several = Authenticator(sqlite_ledger.tokens, oidc(jwks_file=str(write(tmp_path / "a.json", idp.jwks))))
    assert "expected a kid" in refused(several, bearer(token))
    one = {"keys": [idp.jwks["keys"][1]]}
    single = Authenticator(sqlite_ledger.tokens, oidc(jwks_file=str(write(tmp_path / "b.json", one))))
    assert single.authenticate(bearer(token)).subject == "oidc:alice"


def test_an_unusable_jwks_file_fails_at_start(sqlite_ledger: Ledger, tmp_path: Path):
    with pytest.raises(ConfigError, match="jwks_file"):
        Authenticator(sqlite_ledger.tokens, oidc(jwks_file=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match="jwks_file"):
        Authenticator(sqlite_ledger.tokens, oidc(jwks_file=str(write(tmp_path / "e.json", {"keys": []}))))


def write(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path


class JwksServer:
    """The identity provider's JWKS endpoint over HTTPS (the test CA's localhost certificate)."""

    def __init__(self, jwks: dict[str, Any], pki: Pki) -> None:
        self.jwks, self.fetches = jwks, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.server = ThreadingHTTPServer(("localhost", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def jwks_server(idp: Idp, pki: Pki) -> Iterator[JwksServer]:
    server = JwksServer(idp.jwks, pki)
    yield server
    server.close()


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def test_jwks_from_an_https_url_is_fetched_once_and_cached(
    sqlite_ledger: Ledger, idp: Idp, jwks_server: JwksServer, pki: Pki
):
    auth = Authenticator(sqlite_ledger.tokens, oidc(jwks_url=jwks_server.url), jwks_ssl_context=trusting(pki))
    for kid in ("rsa-1", "ec-1", "rsa-1"):
        assert auth.authenticate(bearer(idp.sign(kid, scope=["read"]))).scopes == {Scope.READ}
    assert jwks_server.fetches == 1
    forged = idp.forged("HS256", idp.public_pem())
    assert "JWT alg" in refused(auth, bearer(forged))
    assert "audience" in refused(auth, bearer(idp.sign(aud="x")))


def test_an_unknown_kid_from_the_url_is_refused_after_one_refetch_at_most(
    sqlite_ledger: Ledger, idp: Idp, jwks_server: JwksServer, pki: Pki
):
    auth = Authenticator(sqlite_ledger.tokens, oidc(jwks_url=jwks_server.url), jwks_ssl_context=trusting(pki))
    token = jwt.encode(idp.claims(), idp.rsa, algorithm="RS256", headers={"kid": "rsa-9"})
    for _ in range(3):
        assert "no such signing key" in refused(auth, bearer(token))
    assert jwks_server.fetches <= 2  # a flood of unknown kids does not become a flood of fetches


def test_a_jwks_server_with_an_untrusted_certificate_is_unavailable_not_trusted(
    sqlite_ledger: Ledger, idp: Idp, jwks_server: JwksServer
):
    auth = Authenticator(sqlite_ledger.tokens, oidc(jwks_url=jwks_server.url))  # the system's CAs
    with pytest.raises(DependencyUnavailable, match="oidc-jwks"):
        auth.authenticate(bearer(idp.sign()))
    assert jwks_server.fetches == 0


def test_an_unreachable_jwks_url_is_a_503_not_a_401(sqlite_ledger: Ledger, idp: Idp, pki: Pki):
    url = f"https://localhost:{free_port()}/jwks.json"
    auth = Authenticator(sqlite_ledger.tokens, oidc(jwks_url=url), jwks_ssl_context=trusting(pki))
    with pytest.raises(DependencyUnavailable):
        auth.authenticate(bearer(idp.sign()))


# ------------------------------------------------------------------------ token routes
@pytest.fixture
def api(sqlite_ledger: Ledger) -> Iterator[tuple[TestClient, dict[str, str], FakeClock]]:
    clock = FakeClock(t=time.time())
    auth = Authenticator(sqlite_ledger.tokens, None, clock.now, cache_s=60.0)
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router, prefix="/api/v1/tokens")
    app.state.api = SimpleNamespace(ledger=sqlite_ledger, auth=auth)
    admin, _ = issue_token(sqlite_ledger.tokens, "root", ["admin"], None, "bootstrap", clock.now())
    with TestClient(app) as client:
        yield client, {"Authorization": bearer(admin)}, clock


def test_an_admin_issues_lists_and_revokes_tokens(api: tuple[TestClient, dict[str, str], FakeClock]):
    client, admin, clock = api
    clock.advance(1)  # listed oldest first
    made = client.post("/api/v1/tokens", json={"name": "gw", "scopes": ["read"], "expires_in_s": 3600}, headers=admin)
    assert made.status_code == 201, made.text
    issued = made.json()
    text, record = issued["token"], issued["record"]
    assert text.startswith(f"pab_{record['token_id']}_")
    assert record["scopes"] == ["read"] and record["state"] == "active" and record["created_by"] == "token:root"
    assert client.get("/api/v1/tokens", headers={"Authorization": bearer(text)}).status_code == 403

    listed = client.get("/api/v1/tokens", headers=admin)
    assert [t["name"] for t in listed.json()] == ["root", "gw"]
    assert parse_token(text)[1] not in listed.text

    gone = client.delete(f"/api/v1/tokens/{record['token_id']}", headers=admin)
    assert gone.status_code == 200 and gone.json()["state"] == "revoked"
    refused_now = client.get("/api/v1/tokens", headers={"Authorization": bearer(text)})
    assert refused_now.status_code == 401 and "revoked" in refused_now.json()["detail"]
    assert [t["name"] for t in client.get("/api/v1/tokens", headers=admin).json()] == ["root"]
    assert len(client.get("/api/v1/tokens?include_revoked=true", headers=admin).json()) == 2


def test_token_routes_answer_problems(api: tuple[TestClient, dict[str, str], FakeClock]):
    client, admin, clock = api
    anonymous = client.get("/api/v1/tokens")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert anonymous.headers["content-type"] == "application/problem+json"
    unknown = client.delete("/api/v1/tokens/0000000000000000", headers=admin)
    assert unknown.status_code == 404 and unknown.json()["type"] == "urn:pacsai:problem:unknown-token"
    for body in (
        {"name": "gw", "scopes": ["root"]},
        {"name": "gw", "scopes": []},
        {"name": "bad name", "scopes": ["read"]},
        {"name": "gw", "scopes": ["read"], "expires_in_s": 5, "expires_at": "2100-01-01T00:00:00Z"},
        {"name": "gw", "scopes": ["read"], "expires_at": "2000-01-01T00:00:00Z"},
        {"name": "gw", "scopes": ["read"], "expires_in_s": 1e308},
        {"name": "gw", "scopes": ["read"], "expires_in_s": 1e-300},
        {"name": "gw", "scopes": ["read"], "expires_at": "2100-01-01T00:00:00"},
    ):
        answer = client.post("/api/v1/tokens", json=body, headers=admin)
        assert answer.status_code == 422, (body, answer.text)


def test_an_absolute_expiry_is_refused(api: tuple[TestClient, dict[str, str], FakeClock]):
    client, admin, _ = api
    made = client.post(
        "/api/v1/tokens",
        json={"name": "gw", "scopes": ["ingest"], "expires_at": "2100-01-01T01:00:00+01:00"},
        headers=admin,
    )
    assert made.status_code == 422 and "expires_at" in made.text  # only expires_in_s: one way to say it
