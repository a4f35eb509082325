"""The pure rules of API credentials (core.auth): token text, hashes, checks and scopes."""

from __future__ import annotations

import pickle

import pytest

from core.auth import (
    ApiToken,
    AuthError,
    Principal,
    Scope,
    check_token,
    format_token,
    hash_secret,
    implied,
    parse_scopes,
    parse_token,
)

TOKEN_ID = "0123456789abcdef"
SECRET = "S3cr3t-_" + "a" * 35
T0 = 1_000_000.0


def token(**changes: object) -> ApiToken:
    fields: dict[str, object] = {
        "token_id": TOKEN_ID,
        "name": "pacs-gateway",
        "scopes": frozenset({Scope.INGEST}),
        "created_at": T0,
        "expires_at": T0 + 3600,
        "revoked_at": None,
        "created_by": "token:root",
    }
    fields.update(changes)
    return ApiToken(**fields)  # type: ignore[arg-type]


def refusal(found: tuple[ApiToken, str] | None, secret: str, now: float) -> AuthError:
    with pytest.raises(AuthError) as caught:
        check_token(found, hash_secret(secret), now)
    assert caught.value.status == 401
    assert secret not in caught.value.detail and hash_secret(secret) not in caught.value.detail
    return caught.value


def test_token_text_round_trips():
    assert parse_token(format_token(TOKEN_ID, SECRET)) == (TOKEN_ID, SECRET)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pab_",
        f"pab_{TOKEN_ID}",
        f"pab_{TOKEN_ID}_",
        f"pab_{TOKEN_ID}_{SECRET}x",
        f"pab_{TOKEN_ID}_{SECRET[:-1]}",
        f"pab_{TOKEN_ID.upper()}_{SECRET}",
        f"pab_{TOKEN_ID[:-1]}_{SECRET}",
        f"pat_{TOKEN_ID}_{SECRET}",
        f"pab_{TOKEN_ID}_{SECRET[:-1]}=",
        f"pab_{TOKEN_ID}_{SECRET[:-1]}/",
    ],
)
def test_malformed_token_text_is_a_401_that_does_not_echo_it(text):
    with pytest.raises(AuthError) as caught:
        parse_token(text)
    assert caught.value.status == 401
    assert "malformed" in caught.value.detail
    assert len(text) < 10 or text not in caught.value.detail


def test_secret_hash_is_sha256_hex():
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_valid_token_names_its_principal():
    record = token(scopes=frozenset({Scope.OPERATE}))
    principal = check_token((record, hash_secret(SECRET)), hash_secret(SECRET), T0 + 10)
    assert principal == Principal("token:pacs-gateway", frozenset({Scope.OPERATE}), "token", TOKEN_ID)
    assert principal.may(Scope.READ) and not principal.may(Scope.ADMIN)


def test_a_token_without_expiry_works_until_revoked():
    record = token(expires_at=None)
    assert check_token((record, hash_secret(SECRET)), hash_secret(SECRET), T0 + 1e9).subject == "token:pacs-gateway"


def test_unknown_id_and_wrong_secret_are_refused_alike():
    unknown = refusal(None, SECRET, T0)
    wrong = refusal((token(), hash_secret(SECRET)), "x" * 43, T0)
    assert unknown.detail == wrong.detail
    assert "not recognised" in unknown.detail


def test_a_revoked_token_is_refused_even_with_the_right_secret():
    error = refusal((token(revoked_at=T0 + 5), hash_secret(SECRET)), SECRET, T0 + 6)
    assert "revoked" in error.detail and TOKEN_ID in error.detail


@pytest.mark.parametrize("offset", [3600, 3601])
def test_a_token_is_expired_from_its_expiry_on(offset):
    error = refusal((token(), hash_secret(SECRET)), SECRET, T0 + offset)
    assert "expired at 1970-01-12T14:46:40+00:00" in error.detail


def test_the_token_state_names_why_it_fails():
    assert token().state(T0) == "active"
    assert token().state(T0 + 3600) == "expired"
    assert token(revoked_at=T0 + 1).state(T0 + 3600) == "revoked"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"token_id": "xyz"}, "token_id"),
        ({"name": ""}, "name"),
        ({"name": "-lead"}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "a" * 65}, "name"),
        ({"expires_at": T0}, "expires_at"),
    ],
)
def test_a_token_record_keeps_its_rules(changes, field):
    with pytest.raises(ValueError, match=f"^{field}: got"):
        token(**changes)


def test_issuing_names_unknown_scopes():
    with pytest.raises(ValueError, match=r"got unknown 'root', 'sudo'; expected some of ingest, read, operate, admin"):
        parse_scopes(["read", "root", "sudo"], strict=True)


def test_a_jwt_scope_claim_ignores_other_apis_scopes():
    assert parse_scopes("openid profile read  ingest", strict=False) == {Scope.READ, Scope.INGEST}
    assert parse_scopes(["admin", "email"], strict=False) == {Scope.ADMIN}
    assert parse_scopes("", strict=True) == frozenset()


def test_admin_implies_every_scope():
    assert implied(frozenset({Scope.ADMIN})) == frozenset(Scope)
    assert implied(frozenset({Scope.INGEST})) == {Scope.INGEST}


def test_auth_error_survives_a_pickle_round_trip():
    error = pickle.loads(pickle.dumps(AuthError(401, "nope")))
    assert (error.status, error.detail) == (401, "nope")
