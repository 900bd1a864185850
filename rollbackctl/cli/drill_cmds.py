"""`rollbackctl drill list` / `drill show NAME [--speed N]`: the game-day scenarios, generated from the
manual's tables (manual/drills.py): each P0 rule, each rollback severity and scope, each degradation
level, a canary failing its pass criteria, HL down during a rollback. `show` prints the fault that
rehearses it (ready for `rollbackctl sim fault`), what it teaches and the SLAs it is scored against at
the given speed. No etcd, no Temporal: reading them changes nothing."""

from __future__ import annotations

import argparse
import json

from rollbackctl.cli.common import CliError, print_json, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drill", help="game-day scenarios generated from the manual: list them, show one",
                       description="Drill scenarios generated from the manual's tables (manual/drills.py).")
    s = p.add_subparsers(dest="drill_cmd", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="every scenario: name, kind, what it rehearses")
    ls.add_argument("--kind", choices=_kinds(), help="only scenarios of this kind")
    ls.add_argument("--json", action="store_true", help="the scenarios as JSON (faults and SLAs included)")
    ls.set_defaults(func=cmd_list)
    sh = s.add_parser("show", help="one scenario: its fault, what it teaches, its SLAs at --speed")
    sh.add_argument("name", metavar="NAME", help="a scenario's name (`drill list`)")
    sh.add_argument("--speed", type=_speed, default=1.0, metavar="N",
                    help="divide every clock by N (1 = the manual's; at most 600)")
    sh.add_argument("--json", action="store_true", help="the scenario as JSON, SLAs at --speed")
    sh.set_defaults(func=cmd_show)


def _kinds() -> tuple[str, ...]:
    from manual.drills import KINDS

    return KINDS


def _speed(raw: str) -> float:
    from manual.drills import MAX_SPEED

    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not 1 <= v <= MAX_SPEED:
        raise argparse.ArgumentTypeError(f"{raw}: between 1 (the manual's clocks) and {MAX_SPEED}")
    return v


def _secs(td) -> str:
    s = td.total_seconds()
    return f"{s / 60:g} min" if s >= 60 and s % 60 == 0 else f"{s:g} s"


def cmd_list(args) -> int:
    from manual import drills

    found = [s for s in drills.scenarios() if args.kind in (None, s.kind)]
    if args.json:
        print_json([s.model_dump(mode="json") for s in found])
        return 0
    print(table([[s.name, s.kind, s.title] for s in found], ["NAME", "KIND", "REHEARSES"]))
    print(f"\n{len(found)} scenarios. `rollbackctl drill show NAME --speed N` for one: its fault, what it teaches, "
          "its SLAs.")
    return 0


def cmd_show(args) -> int:
    from manual import drills

    try:
        sc = drills.get(args.name)
    except drills.UnknownScenario as e:
        raise CliError(str(e), 2) from None
    slas = drills.scaled(sc.slas, args.speed)
    if args.json:
        print_json({**sc.model_dump(mode="json"), "speed": args.speed,
                    "slas": [s.model_dump(mode="json") for s in slas]})
        return 0
    print(f"{sc.name}: {sc.title}\n\n{sc.teaches}\n")
    assignments = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sc.fault.items())
    print(f"Fault (the trading core's fault API): rollbackctl sim fault {assignments}")
    if slas:
        speed = "" if args.speed == 1 else f" at speed {args.speed:g} (the manual's / {args.speed:g})"
        print(f"\nScored against{speed}:")
        for s in slas:
            print(f"  {s.name:<16} within {_secs(s.within):<10} {s.what}")
    else:
        print("\nNo human clock: it is scored on whether it rolled back on its own and paged.")
    return 0
