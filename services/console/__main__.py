"""python -m services.console: the operators' review console (web), over the result service's gRPC API.

    python -m services.console                      serve (settings from CONSOLE_* variables)
    python -m services.console add-operator NAME    create an operator, or give one a new password
        [--locale de] [--password-stdin]            (a generated password is printed when none is read)
"""

from __future__ import annotations

import argparse
import secrets
import sys

from pydantic import ValidationError

from services.common.lifecycle import raise_open_files_limit
from services.common.logs import configure_logging
from services.console.accounts import AccountError, OperatorAccounts
from services.console.settings import ConsoleSettings


def add_operator(settings: ConsoleSettings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.console add-operator")
    parser.add_argument("name")
    parser.add_argument("--locale", default=settings.default_locale, help="the operator's language, e.g. de, pt-BR")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    options = parser.parse_args(argv)
    password = sys.stdin.readline().rstrip("\n") if options.password_stdin else secrets.token_urlsafe(15)
    try:
        OperatorAccounts(settings.accounts_path).add(options.name, password, options.locale)
    except AccountError as error:
        print(f"add-operator: {error}", file=sys.stderr)
        return 2
    print(f"operator {options.name!r} saved in {settings.accounts_path}")
    if not options.password_stdin:
        print(f"password: {password}")
    return 0


def serve(settings: ConsoleSettings) -> int:
    import uvicorn

    from services.console.app import create_app
    from services.console.http_guard import guarded_http_protocol

    configure_logging("console", settings.log_level)
    raise_open_files_limit()  # each connection the console holds is a descriptor: see lifecycle.py
    try:
        app = create_app(settings)
    except ValueError as error:
        print(f"console: refusing to start: {error}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            http=guarded_http_protocol(settings.connection_limits()),
                            ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
                            ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
                            timeout_keep_alive=5, timeout_graceful_shutdown=5, limit_concurrency=1000,
                            server_header=False, proxy_headers=False)
    uvicorn.Server(config).run()
    return 0


def main() -> int:
    try:
        settings = ConsoleSettings()
    except ValidationError as error:
        print(f"console: bad settings: {error}", file=sys.stderr)
        return 2
    if sys.argv[1:2] == ["add-operator"]:
        return add_operator(settings, sys.argv[2:])
    if len(sys.argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
