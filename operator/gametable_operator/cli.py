"""``gateway-operator``: run the GameTable operator, or preview what it renders (offline)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gametable_operator.render import InvalidGameTable, render_config, render_configmap
from gametable_operator.settings import from_env
from gametable_operator.webhook import inject
from gateway.config import ConfigError

# A file about to be applied has no uid yet; the API server assigns it.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded table.json) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a bad file or GameTable)."""
    parser = argparse.ArgumentParser(prog="gateway-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser(
        "render", help="print the sidecar ConfigMap a GameTable file renders to, as YAML"
    )
    render.add_argument("gametable", metavar="GAMETABLE.yaml", type=Path)
    render.add_argument(
        "--uid", help="the GameTable's uid for the ownerReference (default: the file's, else zeros)"
    )
    sidecar = commands.add_parser(
        "sidecar",
        help="print the pod spec fragment the webhook would add (for clusters without it)",
        description="Prints, as YAML, the initContainers and volumes the admission webhook "
        "adds to a pod of this GameTable, with the sidecar defaults of "
        "GATEWAY_OPERATOR_SIDECAR. Merge it into the pod template by hand where the "
        "webhook is not installed.",
    )
    sidecar.add_argument("gametable", metavar="GAMETABLE.yaml", type=Path)
    commands.add_parser(
        "run",
        help="run the operator (kopf) with the settings from GATEWAY_OPERATOR_* variables",
        description="Runs `kopf run --standalone -m gametable_operator.handlers` with the "
        "namespaces and liveness endpoint of GATEWAY_OPERATOR_NAMESPACES and "
        "GATEWAY_OPERATOR_LIVENESS; the other GATEWAY_OPERATOR_* variables are read by the "
        "operator itself (operator/README.md).",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run()
    if args.command == "sidecar":
        return _sidecar(args.gametable)
    return _render(args.gametable, args.uid)


def kopf_argv(env: Mapping[str, str]) -> list[str]:
    """The ``kopf run`` arguments for the operator's settings (ConfigError if they are bad)."""
    cfg = from_env(env)
    argv = ["run", "--log-format", "json", "-m", "gametable_operator.handlers"]
    argv += ["--peering", cfg.peering] if cfg.peering else ["--standalone"]
    argv += ["--liveness", cfg.liveness]
    if cfg.log_level == "DEBUG":
        argv.append("--verbose")
    if cfg.namespaces:
        for namespace in cfg.namespaces:
            argv += ["--namespace", namespace]
    else:
        argv.append("--all-namespaces")
    return argv


def _run() -> int:
    try:
        argv = kopf_argv(os.environ)
    except ConfigError as exc:
        print(f"gateway-operator: bad settings: {exc}", file=sys.stderr)
        return 2
    from kopf.cli import main as kopf_main

    kopf_main(args=argv, prog_name="gateway-operator")  # exits the process
    return 0


def _load(path: Path) -> dict[str, Any] | str:
    """The GameTable in a file, or what is wrong with the file."""
    try:
        gametable: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror or exc}"
    except yaml.YAMLError as exc:
        return f"{path}: not valid YAML: {exc}"
    if not isinstance(gametable, dict) or gametable.get("kind") != "GameTable":
        return f"{path}: not a GameTable (kind: GameTable expected)"
    return gametable


def _sidecar(path: Path) -> int:
    gametable = _load(path)
    if isinstance(gametable, str):
        return _fail(gametable)
    try:
        defaults = from_env(os.environ).sidecar
    except ConfigError as exc:
        print(f"gateway-operator: bad settings: {exc}", file=sys.stderr)
        return 2
    try:
        render_config(gametable)  # the same validation the operator applies
    except (InvalidGameTable, TypeError, KeyError) as exc:
        return _fail(f"{path}: {exc}")
    pod = inject({"spec": {"containers": []}}, gametable, defaults)
    fragment = {"spec": {"initContainers": pod["spec"]["initContainers"],
                         "volumes": pod["spec"]["volumes"]}}  # fmt: skip
    sys.stdout.write(yaml.dump(fragment, Dumper=_Dumper, sort_keys=False))
    return 0


def _render(path: Path, uid: str | None) -> int:
    loaded = _load(path)
    if isinstance(loaded, str):
        return _fail(loaded)
    gametable = loaded
    meta = gametable.setdefault("metadata", {})
    if isinstance(meta, dict) and (uid or not meta.get("uid")):
        if not uid:
            print(
                f"gateway-operator: {path}: no metadata.uid; the ownerReference uses a "
                "placeholder (the operator uses the applied resource's uid)",
                file=sys.stderr,
            )
        meta["uid"] = uid or PLACEHOLDER_UID
    try:
        configmap = render_configmap(gametable)
    except InvalidGameTable as exc:
        return _fail(f"{path}: {exc.message}")
    sys.stdout.write(yaml.dump(configmap, Dumper=_Dumper, sort_keys=False))
    return 0


def _fail(message: str) -> int:
    print(f"gateway-operator: invalid GameTable: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
