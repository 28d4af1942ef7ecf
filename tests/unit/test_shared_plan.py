"""The shared-record rules (pure): heal, fail over by quorum, fail back, differing lists."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig, parse_config
from gateway.fleet.membership import lists_conflict, membership
from gateway.fleet.records import MAX_EPOCH, Record, View
from gateway.sidecar.election import LinkState, LinkStatus
from gateway.sidecar.shared_plan import plan

NOW = 1_000_000.0


def config(*brokers: str) -> GatewayConfig:
    doc = {
        "version": 1,
        "broker_group": "g",
        "table": {"game": "roulette", "code": "ARO-001"},
        "brokers": [
            {"id": b, "host": "10.0.0.1", "port": 1883 + i, "priority": i + 1}
            for i, b in enumerate(brokers)
        ],
    }
    return parse_config(doc, source="<test>", env={})


def view(name: str, up: list[str], brokers: list[str] | None, epoch: int = 5) -> View:
    listed = None if brokers is None else {b: i + 1 for i, b in enumerate(brokers)}
    return View(name, epoch, {b: NOW - 100 for b in up}, {}, 1, listed)


def links(up: list[str], every: list[str]) -> list[LinkStatus]:
    return [
        LinkStatus(
            b,
            "h",
            1,
            i + 1,
            LinkState.READY if b in up else LinkState.DOWN,
            0.0,
            0.0,
            0,
            (),
            0.0,
            "",
        )
        for i, b in enumerate(every)
    ]


def record(broker: str, epoch: int = 5) -> Record:
    return Record(broker, epoch, "x", 0.0, "")


def test_no_record_is_created_on_the_best_broker_above_every_epoch_seen() -> None:
    """No record: one is proposed on the best common broker, one above every view's epoch."""
    c = config("b1", "b2")
    me = view("me", ["b1", "b2"], ["b1", "b2"], epoch=3)
    p = plan(None, [view("o", ["b1"], ["b1", "b2"], epoch=9)], me, [], None, False, c, NOW)
    assert p is not None and (p.broker, p.epoch) == ("b1", 10)
    assert p.reason.startswith("record missing")


def test_an_unusable_record_is_replaced_above_the_epoch_it_carries() -> None:
    """A record that did not parse is re-created above its own epoch and the views'."""
    c = config("b1", "b2")
    me = view("me", ["b2"], ["b1", "b2"])
    p = plan(None, [], me, [], "b2", False, c, NOW, problem="by must be a string", floor=40)
    assert p is not None and (p.broker, p.epoch) == ("b2", 41)
    assert "record unusable (by must be a string)" in p.reason


def test_a_record_naming_a_broker_nobody_has_is_replaced() -> None:
    """b9 is on no sidecar's list: replaced on the broker in use."""
    c = config("b1", "b2")
    me = view("me", ["b1", "b2"], ["b1", "b2"])
    p = plan(record("b9", 50), [], me, [], "b2", False, c, NOW)
    assert p is not None and (p.broker, p.epoch) == ("b2", 51)
    assert "no sidecar of the group has" in p.reason


def test_a_healthy_record_is_left_alone() -> None:
    """Nothing to do: no proposal, however often asked."""
    c = config("b1", "b2")
    me = view("me", ["b1", "b2"], ["b1", "b2"])
    assert (
        plan(record("b1"), [view("o", ["b1", "b2"], ["b1", "b2"])], me, [], "b1", False, c, NOW)
        is None
    )


def test_failover_needs_a_majority_of_the_sidecars_that_have_the_broker() -> None:
    """Active b1 down for me alone: stay (my problem). Down for 2 of 3: move to b2."""
    c = config("b1", "b2")
    me = view("me", ["b2"], ["b1", "b2"])
    fine = [view(f"o{i}", ["b1", "b2"], ["b1", "b2"]) for i in (1, 2)]
    assert plan(record("b1"), fine, me, [], "b1", False, c, NOW) is None


def test_failover_with_a_majority_down() -> None:
    """Active b1 down for 2 of 3 sidecars: the record moves to b2 at the next epoch."""
    c = config("b1", "b2")
    me = view("me", ["b2"], ["b1", "b2"])
    others = [view("o1", ["b2"], ["b1", "b2"]), view("o2", ["b1", "b2"], ["b1", "b2"])]
    p = plan(record("b1"), others, me, [], "b1", False, c, NOW)
    assert p is not None and (p.broker, p.epoch) == ("b2", 6)
    assert p.reason == "b1 down for 2/3 sidecars"


def test_failover_prefers_a_broker_every_sidecar_reaches() -> None:
    """b1 dies; b2 is preferred but one sidecar is still reconnecting to it: go to b3,
    which all reach, rather than strand that sidecar (fail-back to b2 comes later)."""
    c = config("b1", "b2", "b3")
    every = ["b1", "b2", "b3"]
    me = view("me", ["b2", "b3"], every)
    others = [view("o1", ["b2", "b3"], every), view("slow", ["b3"], every)]
    p = plan(record("b1"), others, me, [], "b1", False, c, NOW)
    assert p is not None and (p.broker, p.epoch) == ("b3", 6)
    assert p.reason == "b1 down for 3/3 sidecars"
    # With every sidecar up on b2 it stays the choice: priority still rules.
    others = [view("o1", ["b2", "b3"], every), view("o2", ["b2", "b3"], every)]
    p = plan(record("b1"), others, me, [], "b1", False, c, NOW)
    assert p is not None and p.broker == "b2"
    # No broker that all reach: a majority's is still better than none.
    others = [view("o1", ["b2"], every), view("o2", ["b3"], every)]
    me = view("me", ["b2"], every)
    p = plan(record("b1"), others, me, [], "b1", False, c, NOW)
    assert p is not None and p.broker == "b2"


def test_lists_that_differ_converge_on_a_broker_every_sidecar_has() -> None:
    """b1,b2 and b2,b3 in one group: a record on b1 (which one sidecar lacks) moves to b2."""
    c = config("b1", "b2")
    me = view("me", ["b1", "b2"], ["b1", "b2"])
    other = view("o", ["b2", "b3"], ["b2", "b3"])
    p = plan(record("b1"), [other], me, [], "b1", False, c, NOW)
    assert p is not None and p.broker == "b2"
    assert "not configured on every sidecar" in p.reason
    # Once on b2, both are content: no flip-flop.
    assert plan(record("b2", 6), [other], me, [], "b2", False, c, NOW) is None
    group = membership(me, [other], c)
    assert group.common == ("b2",) and "me lacks b3" in group.differ() and group.conflict() == ""


def test_lists_with_nothing_in_common_are_a_conflict_nobody_fights_over() -> None:
    """b1 only and b2 only: neither overwrites the other's record; the conflict is named."""
    c1, c2 = config("b1"), config("b2")
    v1, v2 = view("s1", ["b1"], ["b1"]), view("s2", ["b2"], ["b2"])
    assert plan(record("b1"), [v2], v1, [], "b1", False, c1, NOW) is None
    assert plan(record("b1"), [v1], v2, [], None, False, c2, NOW) is None
    assert "no broker is configured on every sidecar" in membership(v1, [v2], c1).conflict()
    assert "no broker is configured" in lists_conflict([v1, v2])
    assert lists_conflict([v1, view("s3", ["b1"], ["b1", "b2"])]) == ""


def test_views_of_older_sidecars_without_a_list_restrict_nothing() -> None:
    """A view without a broker list is taken to have every broker."""
    c = config("b1", "b2")
    me = view("me", ["b1", "b2"], ["b1", "b2"])
    old = view("old", ["b1", "b2"], None)
    assert plan(record("b1"), [old], me, [], "b1", False, c, NOW) is None
    assert membership(me, [old], c).known is None


def test_failback_waits_for_the_round_in_flight() -> None:
    """A preferred broker up for a majority long enough: not while busy, then yes."""
    c = config("b1", "b2")
    me = view("me", ["b1", "b2"], ["b1", "b2"])
    others = [view("o", ["b1", "b2"], ["b1", "b2"])]
    status = links(["b1", "b2"], ["b1", "b2"])
    assert plan(record("b2"), others, me, status, "b2", True, c, NOW) is None
    p = plan(record("b2"), others, me, status, "b2", False, c, NOW)
    assert p is not None and p.broker == "b1" and p.reason.startswith("fail-back")


def test_epochs_stop_at_the_largest_exact_integer() -> None:
    """A record at the top epoch is replaced at the top epoch, never above (JSON-exact)."""
    c = config("b1", "b2")
    me = view("me", ["b2"], ["b1", "b2"], epoch=MAX_EPOCH)
    p = plan(record("b1", MAX_EPOCH), [], me, [], "b1", False, c, NOW)
    assert p is not None and p.epoch == MAX_EPOCH


brokers = st.lists(st.sampled_from(["b1", "b2", "b3"]), unique=True, max_size=3)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.tuples(brokers, brokers), min_size=1, max_size=4),
    st.sampled_from(["b1", "b2", "b3", "b9"]),
    st.integers(0, 100),
)
def test_a_proposal_is_always_a_broker_this_sidecar_has_at_a_higher_epoch(
    sidecars: list[tuple[list[str], list[str]]], active: str, epoch: int
) -> None:
    """Whatever the group looks like, a proposal names one of my brokers that I see up,
    and its epoch is above the record's and every epoch seen (or the top epoch)."""
    (my_list, my_up), *rest = [(lst or ["b1"], [b for b in up if b in (lst or ["b1"])])
                               for lst, up in sidecars]  # fmt: skip
    c = config(*my_list)
    me = view("me", my_up, my_list, epoch=epoch)
    others = [view(f"o{i}", up, lst, epoch=epoch) for i, (lst, up) in enumerate(rest)]
    p = plan(record(active, epoch), others, me, [], active, False, c, NOW)
    if p is not None:
        assert p.broker in my_list and p.broker in my_up
        assert p.epoch > epoch or p.epoch == MAX_EPOCH
