"""Parsers of what Redis holds (records, views, script replies, statistics): a value or
MalformedInput, whatever the bytes."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import MalformedInput
from gateway.fleet.records import (
    MAX_EPOCH,
    Record,
    View,
    epoch_hint,
    parse_cas_reply,
    parse_group,
    parse_step_reply,
    record_sha,
)
from gateway.fleet.stats import SidecarStats, from_hash, to_hash

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4)
    ),
    max_leaves=20,
)
RECORD_KEYS = st.sampled_from(["broker", "epoch", "by", "at", "reason", "x"])
VIEW_KEYS = st.sampled_from(["i", "e", "up", "f", "s", "b", "x"])


def valid_record() -> dict[str, Any]:
    return {"broker": "b1", "epoch": 7, "by": "ARO-1-ab", "at": 1.5, "reason": "started"}


def valid_view() -> dict[str, Any]:
    return {"i": "ARO-1-ab", "e": 7, "up": {"b1": 1.0}, "f": {"b1": 0}, "s": 3, "b": {"b1": 1}}


def parse_or_malformed(parser: Any, text: str) -> None:
    try:
        parser(text)
    except MalformedInput as exc:
        assert exc.message  # names the problem
    # anything else propagates and fails the test


@FAST
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_a_record_or_malformed(text: str) -> None:
    """Any stored text: a Record or MalformedInput, never another exception."""
    parse_or_malformed(Record.from_json, text)
    parse_or_malformed(View.from_json, text)
    assert isinstance(epoch_hint(text), int)


@FAST
@given(JSON)
def test_arbitrary_json_trees_are_a_record_or_malformed(tree: Any) -> None:
    """Any JSON document, as a record or view: a value or MalformedInput."""
    text = json.dumps(tree)
    parse_or_malformed(Record.from_json, text)
    parse_or_malformed(View.from_json, text)


@FAST
@given(RECORD_KEYS, JSON)
def test_a_record_with_one_field_replaced_is_a_record_or_malformed(key: str, value: Any) -> None:
    """A valid record with one field set to anything: a Record that type-checks, or refused."""
    doc = valid_record() | {key: value}
    try:
        record = Record.from_json(json.dumps(doc))
    except MalformedInput:
        return
    assert isinstance(record.epoch, int) and 0 <= record.epoch <= MAX_EPOCH
    assert isinstance(record.broker, str) and record.broker


@FAST
@given(VIEW_KEYS, JSON)
def test_a_view_with_one_field_replaced_is_a_view_or_malformed(key: str, value: Any) -> None:
    """A valid view with one field set to anything: a View whose numbers are numbers, or refused."""
    doc = valid_view() | {key: value}
    try:
        view = View.from_json(json.dumps(doc))
    except MalformedInput:
        return
    assert all(isinstance(t, float) for t in view.up.values())
    assert all(isinstance(n, int) for n in view.failures.values())


@pytest.mark.parametrize(
    "text,problem",
    [
        ("{broker: b1", "not JSON"),
        ('{"broker":"b1","by":"x","at":0,"reason":""}', "epoch must be an integer"),
        ('{"broker":"b1","epoch":3,"at":0,"reason":""}', "by must be a string"),
        ('{"broker":"b1","epoch":"7","by":"x","at":0,"reason":""}', "epoch must be an integer"),
        ('{"broker":"b1","epoch":1e400,"by":"x","at":0,"reason":""}', "epoch must be an integer"),
        ('{"broker":"b1","epoch":true,"by":"x","at":0,"reason":""}', "epoch must be an integer"),
        ('{"broker":"","epoch":1,"by":"x","at":0,"reason":""}', "broker must be a string"),
        ('{"broker":"b1","epoch":1,"by":"x","at":NaN,"reason":""}', "at must be finite"),
        ("[" * 4000, "not JSON: RecursionError"),
        (json.dumps(valid_record() | {"pad": "x" * 5000}), "characters long"),
    ],
)
def test_each_way_a_record_can_be_wrong_is_named(text: str, problem: str) -> None:
    """The message says what is wrong with the record."""
    with pytest.raises(MalformedInput, match=problem):
        Record.from_json(text)


def test_a_record_round_trips_and_its_bad_copy_still_gives_its_epoch() -> None:
    """to_json/from_json are inverse; a record missing a field still yields its epoch."""
    record = Record("b2", 41, "me", 12.5, "why")
    assert Record.from_json(record.to_json()) == record
    assert epoch_hint('{"broker":"b1","epoch":40}') == 40
    assert epoch_hint('{"epoch": -3}') == 0 and epoch_hint("nope") == 0


def test_views_round_trip_with_and_without_a_broker_list() -> None:
    """Older sidecars write no broker list; both forms read back."""
    view = View("i1", 3, {"b1": 10.0}, {"b1": 1}, 9, {"b1": 1, "b2": 2})
    assert View.from_json(view.to_json()) == view
    old = View("i1", 3, {"b1": 10.0}, {"b1": 1}, 9)
    assert View.from_json(old.to_json()).brokers is None


def test_the_group_is_parsed_field_by_field() -> None:
    """One bad view does not hide the good ones; a bad record is named, its epoch kept."""
    fields = {
        "record": '{"broker":"b1","epoch":12}',
        "view:a": View("a", 1, {}, {}, 1).to_json(),
        "view:b": "[[[",
        "other": "ignored",
    }
    state = parse_group(fields)
    assert state.record is None and "by must be a string" in state.record_problem
    assert state.epoch_floor == 12
    assert set(state.views) == {"view:a"} and set(state.bad_views) == {"view:b"}
    assert state.record_sha == record_sha(fields["record"])


@FAST
@given(JSON)
def test_script_replies_are_parsed_or_malformed(reply: Any) -> None:
    """Whatever Redis answers to the scripts: a value or MalformedInput."""
    for parser in (parse_step_reply, parse_cas_reply):
        with contextlib.suppress(MalformedInput):
            parser(reply)


def test_the_step_reply_is_read() -> None:
    """The step script's reply: the flat hash, the record's SHA-1, a deleted wrong type."""
    record = Record("b1", 2, "x", 0.0, "").to_json()
    state = parse_step_reply([["record", record], "abc", "string"])
    assert state.record is not None and state.record.epoch == 2
    assert (state.record_sha, state.wrong_type) == ("abc", "string")
    assert parse_cas_reply(1) is True and parse_cas_reply(0) is False
    with pytest.raises(MalformedInput):
        parse_cas_reply([0, None])  # the old script's reply to a record without an epoch


def stats_hash() -> dict[str, str]:
    return to_hash(SidecarStats("i", "ARO-001", 1.0, "b1", 3, 1, {"detects_ok": 2}))


@FAST
@given(st.sampled_from(sorted(stats_hash())), st.text(max_size=50) | JSON.map(json.dumps))
def test_a_stats_hash_with_one_field_replaced_is_stats_or_malformed(key: str, value: str) -> None:
    """A statistics hash with any field set to any text: SidecarStats or MalformedInput."""
    try:
        s = from_hash(stats_hash() | {key: value})
    except MalformedInput:
        return
    assert all(isinstance(v, int) for v in s.counters.values())


def test_a_stats_hash_round_trips() -> None:
    """What a sidecar writes is what the fleet view reads."""
    stats = SidecarStats("i", "ARO-001", 1.0, "b1", 3, 1, {"detects_ok": 2})
    assert from_hash(to_hash(stats)) == stats
