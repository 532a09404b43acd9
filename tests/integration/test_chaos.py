"""Fault injection on a stack of its own: every event ends classified or dead-lettered, none twice."""

from __future__ import annotations

import json

import pytest

from services.localstack import chaos
from services.localstack.stack import LocalStack, StackOptions


@pytest.fixture(scope="module")
def chaos_stack(postgres_url, tmp_path_factory):
    with LocalStack(StackOptions(work_dir=tmp_path_factory.mktemp("chaos"), database_url=postgres_url)) as stack:
        yield stack


def assert_mid_stream(result: chaos.ScenarioResult) -> None:
    assert 0 < result.published_at_fault < result.events_in, f"the fault did not land mid-stream: {result}"


def assert_nothing_lost_or_doubled(result: chaos.ScenarioResult, dead_lettered: int = 0) -> None:
    assert result.lost == 0, result
    assert result.duplicated == 0, result
    assert result.dead_lettered == dead_lettered, result


def test_triton_killed_mid_stream_and_restarted(chaos_stack):
    result = chaos.triton_killed_and_restarted(chaos_stack, 300)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 300 and result.recovery_s is not None


def test_one_of_two_workers_killed(chaos_stack):
    result = chaos.worker_killed(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 200


def test_result_service_restarted_mid_stream(chaos_stack):
    result = chaos.results_restarted(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 200


def test_the_same_events_twice_are_stored_and_published_once(chaos_stack):
    result = chaos.produced_twice(chaos_stack, 100)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 100


def test_poison_is_dead_lettered_and_good_events_go_on_in_order(chaos_stack):
    result = chaos.poison_interleaved(chaos_stack, 60)
    assert_nothing_lost_or_doubled(result, dead_lettered=3)
    assert result.classified == 60
    notes = json.loads(result.notes)
    assert notes["order_kept"]
    assert "cannot be decoded" in notes["poison_reasons"]["chaos-poison-corrupt"]
    assert "100000x100000" in notes["poison_reasons"]["chaos-poison-bomb"]
    assert notes["poison_reasons"]["chaos-poison-garbage"].startswith("not a ListingSubmitted")


def test_a_model_reloaded_at_a_new_version_is_picked_up_without_a_restart(chaos_stack):
    result = chaos.model_reloaded(chaos_stack, 300)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    notes = json.loads(result.notes)
    versions = notes["model_versions"]
    old = [v for v in versions if notes["old"] in v.split(",")]
    new = [v for v in versions if notes["new"] in v.split(",")]
    assert old and new, versions  # served by version 1, then by version 2, in the same run
    assert result.classified == 300 and result.recovery_s is not None
