"""The console's security core: scrypt password hashes, signed sessions, the brake on password guessing."""

from __future__ import annotations

import json
import os
import time

import pytest

from services.console.accounts import AccountError, OperatorAccounts, hash_password, verify_password
from services.console.sessions import LoginThrottle, SessionSigner, tokens_match


def test_passwords_are_stored_as_salted_scrypt_hashes_only(tmp_path):
    accounts = OperatorAccounts(tmp_path / "operators.json")
    accounts.add("ana", "correct horse battery", "de")
    text = (tmp_path / "operators.json").read_text()
    assert "correct horse battery" not in text and "scrypt$32768$8$1$" in text
    assert os.stat(tmp_path / "operators.json").st_mode & 0o077 == 0  # readable by the service's user only
    assert accounts.authenticate("ana", "correct horse battery").locale == "de"
    assert accounts.authenticate("ana", "correct horse batterY") is None
    assert accounts.authenticate("nobody", "correct horse battery") is None
    assert hash_password("same password!") != hash_password("same password!")  # salted
    assert not verify_password("x", "md5$abc") and not verify_password("x", "garbage")


@pytest.mark.parametrize("name, password, locale", [("A", "long enough pw", "en"), ("<b>x</b>", "long enough pw", "en"),
                                                    ("bo", "short", "en"), ("bo", "long enough pw", "'); drop")])
def test_names_passwords_and_locales_that_cannot_be_used_are_refused(tmp_path, name, password, locale):
    with pytest.raises(AccountError):
        OperatorAccounts(tmp_path / "operators.json").add(name, password, locale)


def test_an_account_added_elsewhere_is_seen_and_a_new_password_changes_the_fingerprint(tmp_path):
    path = tmp_path / "operators.json"
    reader = OperatorAccounts(path)
    assert reader.get("ana") is None
    OperatorAccounts(path).add("ana", "first password!", "en")
    first = reader.get("ana").fingerprint
    time.sleep(0.01)
    OperatorAccounts(path).add("ana", "second password!!", "en")
    assert reader.get("ana").fingerprint != first
    assert set(json.loads(path.read_text())["operators"]) == {"ana"}


def test_a_session_cookie_cannot_be_forged_altered_or_used_after_it_expires():
    signer = SessionSigner("s" * 40, ttl_s=60)
    cookie, session = signer.issue("ana", "de", "f" * 16)
    assert signer.read(cookie) == session
    body, _, signature = cookie.rpartition(".")
    assert signer.read(body[:-2] + "xx." + signature) is None
    assert signer.read(cookie + "a") is None
    assert SessionSigner("t" * 40, ttl_s=60).read(cookie) is None  # another secret
    assert signer.read("") is None and signer.read("x" * 5000) is None and signer.read("no-dot") is None
    expired_cookie, _ = SessionSigner("s" * 40, ttl_s=-1).issue("ana", "de", "f" * 16)
    assert signer.read(expired_cookie) is None
    assert not tokens_match("", "") and not tokens_match(None, "a") and tokens_match(session.csrf_token,
                                                                                      session.csrf_token)


def test_failed_logins_past_the_allowance_must_wait_twice_as_long_each_time():
    throttle = LoginThrottle(allowed_failures=3, max_wait_s=60)
    keys = ("operator:ana", "address:10.0.0.1")
    for _ in range(3):
        assert throttle.wait_s(*keys) == 0
        throttle.failed(*keys)
    first = throttle.wait_s(*keys)
    assert 0.5 < first <= 1.0
    throttle.failed(*keys)
    assert 1.0 < throttle.wait_s(*keys) <= 2.0
    assert throttle.wait_s("operator:ana", "address:10.0.0.2") > 0  # another address, the same account
    assert throttle.wait_s("operator:bob", "address:10.0.0.1") > 0  # the same address, another account
    assert throttle.wait_s("operator:bob", "address:10.0.0.2") == 0
    throttle.succeeded(*keys)
    assert throttle.wait_s(*keys) == 0
