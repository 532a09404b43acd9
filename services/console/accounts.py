"""Operator accounts: names, languages and scrypt password hashes in one JSON file the replicas share.

scrypt is memory-hard (each guess costs 32 MiB and tens of milliseconds), and the hash's parameters travel with it,
so they can be raised later without invalidating existing passwords. Passwords are never logged or stored in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

OPERATOR_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,31}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
MIN_PASSWORD_LENGTH = 12


class AccountError(ValueError):
    """A name or password that cannot be used; the message says which rule."""


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=256 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Checked when a name is unknown, so a wrong name costs as long as a wrong password (no name probing by timing).
_DECOY_HASH = hash_password(secrets.token_urlsafe(16), n=SCRYPT_N)


@dataclass(frozen=True)
class Operator:
    name: str
    locale: str
    password_hash: str

    @property
    def fingerprint(self) -> str:
        """Changes when the password does: sessions carry it, so a new password (or a removed account) ends them."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


class OperatorAccounts:
    """The accounts file, re-read when it changes (an operator added on one replica is known to all)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._loaded: tuple[float, int] | None = None
        self._operators: dict[str, Operator] = {}

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._operators, self._loaded = {}, None
            return
        if self._loaded == (stat.st_mtime, stat.st_size):
            return
        data = json.loads(self.path.read_text(encoding="utf-8"))
        self._operators = {name: Operator(name, entry.get("locale", "en"), entry["password"])
                           for name, entry in data.get("operators", {}).items()}
        self._loaded = (stat.st_mtime, stat.st_size)

    def get(self, name: str) -> Operator | None:
        with self._lock:
            self._refresh()
            return self._operators.get(name)

    def authenticate(self, name: str, password: str) -> Operator | None:
        """The operator when the password is theirs; the same work is done for an unknown name."""
        operator = self.get(name)
        if operator is None:
            verify_password(password, _DECOY_HASH)
            return None
        return operator if verify_password(password, operator.password_hash) else None

    def add(self, name: str, password: str, locale: str) -> Operator:
        """Creates or replaces an account (a new password ends the account's sessions)."""
        if not OPERATOR_NAME.fullmatch(name):
            raise AccountError("an operator name is 2-32 lower-case letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
        if not re.fullmatch(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,2}", locale):
            raise AccountError("the locale is a language tag such as en, de or pt-BR")
        with self._lock:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {"operators": {}}
            data.setdefault("operators", {})[name] = {"password": hash_password(password), "locale": locale,
                                                      "updated_at": int(time.time())}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1)
            os.replace(temporary, self.path)
            self._loaded = None
        return Operator(name, locale, data["operators"][name]["password"])
