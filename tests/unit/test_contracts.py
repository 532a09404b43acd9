"""The generated contracts must match proto/: a stale file fails here."""

from services.common.contracts.generate import stale_files


def test_generated_contracts_are_up_to_date():
    assert stale_files() == []
