"""Where the command-line tools find the address and API key of the service they call.

In turn: the tool's flag, then an environment variable, then the file `make up` wrote in .run/up/ (mode 600). A key
passed as `--api-key KEY` shows in `ps` and the shell's history to anyone on the machine, so each tool also takes
`--api-key-file PATH` (the key is the file's first line), as kubectl's `--token-file` does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

UP_DIR = Path(".run") / "up"
# Larger than any key; a file past it is not a key file (a path mistyped onto a photo, say).
MAX_KEY_FILE_BYTES = 64 * 1024


class CallerSettingError(ValueError):
    """A flag the tool cannot use (an unreadable key file, two keys): it says which and why."""


def default_setting(variable: str, up_file: str) -> str | None:
    """The environment variable's value, else what `make up` wrote in .run/up/up_file, else None."""
    if os.environ.get(variable):
        return os.environ[variable]
    path = UP_DIR / up_file
    return path.read_text().strip() if path.exists() else None


def add_api_key_options(parser: argparse.ArgumentParser, default_help: str) -> None:
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None,
                      help=f"the key itself (visible in `ps`: prefer --api-key-file) (default: {default_help})")
    keys.add_argument("--api-key-file", type=Path, default=None, metavar="PATH",
                      help="a file whose first line is the key")


def api_key(options: argparse.Namespace, variable: str, up_file: str) -> str | None:
    """The key from --api-key, --api-key-file, the environment variable or .run/up/, in that order."""
    if options.api_key:
        return options.api_key
    if options.api_key_file is not None:
        return read_key_file(options.api_key_file)
    return default_setting(variable, up_file)


def read_key_file(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise CallerSettingError(f"the API key file {path} cannot be read: {error.strerror or error}") from error
    if len(data) > MAX_KEY_FILE_BYTES:
        raise CallerSettingError(f"the API key file {path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CallerSettingError(f"the API key file {path} is not UTF-8 text") from error
    key = lines[0].strip() if lines else ""
    if not key:
        raise CallerSettingError(f"the API key file {path} is empty")
    return key
