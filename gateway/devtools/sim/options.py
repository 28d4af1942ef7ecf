"""The command-line options that script the simulated devices (``gateway sim`` / ``demo``).

One flag per :class:`Behaviour` field (plus the shakers' fault and time scale), so whatever a
test can script in code, a person can script from a terminal; :func:`behaviour_from_args`
turns the parsed options back into a ``Behaviour``. Defaults come from ``Behaviour()``.
"""

from __future__ import annotations

import argparse

from gateway.devtools.sim.devices import ANSWER_ON, ANSWERS, Behaviour


def _seconds(text: str) -> float:
    if (value := float(text)) < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _count(text: str) -> int:
    if (value := int(text)) < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_behaviour_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulated devices' behaviour options (``gateway sim`` / ``demo``)."""
    d = Behaviour()
    g = parser.add_argument_group("simulated device behaviour")
    g.add_argument(
        "--delay",
        type=_seconds,
        default=d.delay_s,
        metavar="S",
        help="seconds from detect to the final answer (default %(default)s)",
    )
    g.add_argument(
        "--answer",
        choices=ANSWERS,
        default=d.answer,
        help="final answer: a result, an error code, or nothing",
    )
    g.add_argument(
        "--err",
        type=int,
        default=d.err,
        help="err code sent with --answer error (default %(default)s: NO SHAKE)",
    )
    for flag, what in (
        ("--not-yet", "'nothing detected yet' frames (err -1, no round_id)"),
        ("--stale", "result frames carrying the previous round id"),
        ("--wrong-round", "result frames carrying a made-up round id"),
        ("--garbage", "malformed frames (bad JSON, wrong shape/type/range)"),
        ("--oversize", "~1 MiB frames"),
        ("--early-empty", "empty/partial result frames for the current round"),
    ):
        g.add_argument(
            flag, type=_count, default=0, metavar="N", help=f"{what} sent before the answer"
        )
    g.add_argument(
        "--repeats",
        type=_count,
        default=d.repeats,
        metavar="N",
        help="times the final answer is published (default %(default)s)",
    )
    g.add_argument(
        "--stream-interval",
        type=_seconds,
        default=d.stream_interval_s,
        metavar="S",
        help="if > 0, re-publish the answer at this interval until timeout",
    )
    g.add_argument(
        "--answer-on",
        choices=ANSWER_ON,
        default=d.answer_on,
        help="answer on the broker that carried the command, or on all",
    )
    g.add_argument(
        "--deal",
        action=argparse.BooleanOptionalAction,
        default=d.deal,
        help="Baccarat IDPs publish the hand as it is dealt before the final frame (default: on)",
    )
    g.add_argument(
        "--shaker-fault",
        action="store_true",
        help="shakers end their cycles with S90 (motion fault) instead of S0",
    )
    g.add_argument(
        "--shake-time-scale",
        type=_seconds,
        default=1.0,
        help="multiplier on the shake duration (e.g. 0.1 for fast demos)",
    )


def behaviour_from_args(args: argparse.Namespace) -> Behaviour:
    """The :class:`Behaviour` described by :func:`add_behaviour_arguments` options."""
    return Behaviour(
        delay_s=args.delay,
        answer=args.answer,
        err=args.err,
        not_yet=args.not_yet,
        stale=args.stale,
        wrong_round=args.wrong_round,
        garbage=args.garbage,
        oversize=args.oversize,
        early_empty=args.early_empty,
        repeats=args.repeats,
        stream_interval_s=args.stream_interval,
        answer_on=args.answer_on,
        deal=args.deal,
    )
