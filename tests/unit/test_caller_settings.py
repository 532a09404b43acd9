"""The tools' API key from a file (--api-key-file), so it need not show in `ps`; and a key file they cannot use is a
clear error on one line, before any call."""

from __future__ import annotations

import argparse

import pytest

from services.tools import classify_image, export_corrections
from services.tools.caller_settings import (MAX_KEY_FILE_BYTES, CallerSettingError, add_api_key_options, api_key,
                                            read_key_file)


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_api_key_options(parser, "test")
    return parser.parse_args(list(argv))


def test_the_key_file_s_first_line_is_the_key(tmp_path):
    path = tmp_path / "key"
    path.write_text("  s3cr3t-key \nsecond line\n")
    assert read_key_file(path) == "s3cr3t-key"
    assert api_key(parsed("--api-key-file", str(path)), "NO_SUCH_VARIABLE_SET", "no-such-file") == "s3cr3t-key"


def test_the_flag_then_the_file_then_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "key"
    path.write_text("from-file")
    monkeypatch.setenv("TEST_CALLER_KEY", "from-environment")
    assert api_key(parsed("--api-key=from-flag"), "TEST_CALLER_KEY", "x") == "from-flag"
    assert api_key(parsed("--api-key-file", str(path)), "TEST_CALLER_KEY", "x") == "from-file"
    assert api_key(parsed(), "TEST_CALLER_KEY", "x") == "from-environment"


def test_both_a_key_and_a_key_file_are_refused(tmp_path):
    with pytest.raises(SystemExit) as exited:
        parsed("--api-key=k", "--api-key-file", str(tmp_path / "key"))
    assert exited.value.code == 2


@pytest.mark.parametrize("content, says", [
    (None, "cannot be read"), (b"", "is empty"), (b"\n\n", "is empty"), (b"\xff\xfe\x00k", "not UTF-8"),
    (b"k" * (MAX_KEY_FILE_BYTES + 1), "not a key file")])
def test_a_key_file_that_cannot_be_a_key_is_a_clear_error(tmp_path, content, says):
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CallerSettingError, match=says):
        read_key_file(path)


def test_a_directory_given_as_the_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(CallerSettingError, match="cannot be read"):
        read_key_file(tmp_path)


@pytest.mark.parametrize("tool, argv", [(classify_image, ["photo.jpg"]), (export_corrections, ["out"])])
def test_each_tool_says_so_on_one_line_and_exits_2_before_calling(tool, argv, tmp_path, capsys):
    assert tool.main([*argv, "--api-key-file", str(tmp_path / "missing"), "--results" if tool is
                      export_corrections else "--gateway", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "API key file" in err and "cannot be read" in err
