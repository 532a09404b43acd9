"""Sessions in signed cookies (any replica can check them), CSRF tokens, and the brake on password guessing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"  # the login form's CSRF token, before there is a session


@dataclass(frozen=True)
class Session:
    operator: str
    locale: str
    csrf_token: str
    expires_at: float
    fingerprint: str  # the account's password fingerprint when the session began


class SessionSigner:
    """HMAC-SHA256 over the session's JSON: a cookie nobody can forge or alter without the secret."""

    def __init__(self, secret: str, ttl_s: int):
        self._key = hashlib.sha256(b"console-session|" + secret.encode()).digest()
        self.ttl_s = ttl_s

    def issue(self, operator: str, locale: str, fingerprint: str) -> tuple[str, Session]:
        session = Session(operator, locale, secrets.token_urlsafe(24), time.time() + self.ttl_s, fingerprint)
        body = base64.urlsafe_b64encode(json.dumps(
            {"o": session.operator, "l": session.locale, "c": session.csrf_token, "e": session.expires_at,
             "f": session.fingerprint}, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}", session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 4096 or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            session = Session(str(data["o"]), str(data["l"]), str(data["c"]), float(data["e"]), str(data["f"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > time.time() else None

    def _sign(self, body: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def tokens_match(presented: str | None, expected: str | None) -> bool:
    return bool(presented) and bool(expected) and hmac.compare_digest(str(presented), str(expected))


class LoginThrottle:
    """Failed logins per account name and per client address: past the allowance, each further attempt must wait,
    twice as long after every failure (up to a cap), and is refused unchecked before then. Per replica: a guesser
    spread over N replicas gets N times the allowance, never more than that."""

    def __init__(self, allowed_failures: int, max_wait_s: float, forget_after_s: float = 3600.0):
        self.allowed = allowed_failures
        self.max_wait_s = max_wait_s
        self.forget_after_s = forget_after_s
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, last failure at)
        self._lock = threading.Lock()

    def wait_s(self, *keys: str) -> float:
        """Seconds before these keys may try again (0: now)."""
        now = time.time()
        with self._lock:
            waits = [self._wait(key, now) for key in keys]
        return max(waits, default=0.0)

    def _wait(self, key: str, now: float) -> float:
        failures, last = self._failures.get(key, (0, 0.0))
        if failures < self.allowed:
            return 0.0
        delay = min(self.max_wait_s, 2.0 ** (failures - self.allowed))
        return max(0.0, last + delay - now)

    def failed(self, *keys: str) -> None:
        now = time.time()
        with self._lock:
            if len(self._failures) > 100_000:  # a flood of names: forget the oldest, keep memory bounded
                for key, (_, last) in sorted(self._failures.items(), key=lambda item: item[1][1])[:50_000]:
                    del self._failures[key]
            for key in keys:
                failures, last = self._failures.get(key, (0, 0.0))
                if now - last > self.forget_after_s:
                    failures = 0
                self._failures[key] = (failures + 1, now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
