"""The ``l2bridge`` command line.

Exit status: 0 success, 1 a runtime failure (device, socket, peer), 2 bad
usage or bad configuration.  Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from l2bridge import __version__
from l2bridge.errors import EXIT_FAILED, EXIT_USAGE, L2bridgeError, sole_cause

MAIN_HELP = """\
Join Ethernet LANs at layer 2 over UDP.

  l2bridge up -c site.toml        run a site in the foreground
  l2bridge show [--json]          peers, counters and drops of a running site
  l2bridge fdb [--json]           MAC addresses learned behind each peer
  l2bridge reload                 apply the edited config of a running site (also: SIGHUP)
  l2bridge check -c site.toml     validate a site configuration
  l2bridge genkey > site.key      a private key (then: l2bridge pubkey < site.key)
  l2bridge tap add|del NAME       persistent tap devices (like tunctl)
  l2bridge lab run SCENARIO       build a multi-site lab in network namespaces and check it
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2bridge",
        description=MAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"l2bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="run a site in the foreground (SIGINT/SIGTERM stop it)")
    up.add_argument("-c", "--config", required=True, metavar="FILE", help="site TOML file")
    up.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                    help="override [site].log_level")

    check = sub.add_parser("check", help="validate a site configuration (and its key files, "
                                         "control path) as `up` would, and print it")
    check.add_argument("-c", "--config", required=True, metavar="FILE")

    for name, text in (("show", "peers, counters and drops of a running site"),
                       ("fdb", "the MAC table of a running site"),
                       ("reload", "re-read the config file of a running site and apply the "
                                  "difference live (exit 2 when it cannot)")):
        p = sub.add_parser(name, help=text)
        where = p.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", metavar="FILE", help="find the site by its config")
        where.add_argument("-s", "--socket", metavar="PATH", help="the site's control socket")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            p.add_argument("--prometheus", action="store_true",
                           help="the Prometheus text format (for node_exporter's textfile "
                                "collector)")

    tap = sub.add_parser("tap", help="create or delete persistent tap/tun devices")
    tap_sub = tap.add_subparsers(dest="tap_command", metavar="add|del", required=True)
    add = tap_sub.add_parser(
        "add", help="create a persistent device (like tunctl / openvpn --mktun)"
    )
    add.add_argument("name")
    add.add_argument("--mode", choices=["tap", "tun"], default="tap")
    add.add_argument("--user", help="owner allowed to attach without root (name or uid)")
    add.add_argument("--group", help="group allowed to attach without root (name or gid)")
    add.add_argument("--multi-queue", action="store_true",
                     help="one queue per worker (needed for workers > 1)")
    delete = tap_sub.add_parser("del", help="delete a persistent device")
    delete.add_argument("name")

    genkey = sub.add_parser("genkey", help="a new private key, base64 (written with mode 0600)")
    genkey.add_argument("file", nargs="?", help="write here (refuses to overwrite); default stdout")
    genpsk = sub.add_parser("genpsk", help="a new pre-shared key, base64 (mode 0600)")
    genpsk.add_argument("file", nargs="?", help="write here (refuses to overwrite); default stdout")
    sub.add_parser("pubkey", help="the public key of the private key on stdin")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The site's commands (``l2bridge lab`` is dispatched by ``netns.main``).

    Every error a user can see is an ``L2bridgeError``: one line, its exit status.
    """
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except L2bridgeError as exc:
        return _fail(str(exc), exc.exit_status)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"l2bridge: {message}", file=sys.stderr)
    return status


def _load(path: str):
    from l2bridge.core.config import load_config

    return load_config(path)


def cmd_up(args: argparse.Namespace) -> int:
    import trio

    from l2bridge.io import logs
    from l2bridge.ops import daemon

    config = _load(args.config)
    secrets = daemon.preflight(config)  # the same checks as `l2bridge check`, first
    handler = logs.setup(config.name, args.log_level or config.log_level)
    try:
        trio.run(daemon.run, config, secrets)
    except BaseException as exc:  # noqa: BLE001 - unwrap trio's groups to name the cause
        cause = sole_cause(exc)
        if isinstance(cause, L2bridgeError):
            return _fail(f"site {config.name}: {cause}", cause.exit_status)
        if isinstance(cause, KeyboardInterrupt):
            return 130
        raise
    finally:
        logs.flush(handler)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Every validation ``up`` makes before touching the system (``daemon.preflight``)."""
    from l2bridge.ops.daemon import preflight

    config = _load(args.config)
    preflight(config)
    peers = ", ".join(
        f"{p.name} ({p.endpoint or 'dial-in'})" for p in config.peers
    ) or "none"
    print(f"{config.path}: ok — site {config.name}, listen {config.listen}, "
          f"bridge {config.bridge}, tap {config.tap}, peers: {peers}")
    return 0


def _socket_path(args: argparse.Namespace) -> str:
    from l2bridge.ops.control import find_socket

    if args.socket:
        return args.socket
    if args.config:
        return _load(args.config).control
    return find_socket()


def _query(args: argparse.Namespace, cmd: str, timeout_s: float | None = None) -> object:
    from l2bridge.ops.control import CLIENT_TIMEOUT_S, query

    return query(_socket_path(args), cmd, timeout_s=timeout_s or CLIENT_TIMEOUT_S)


def cmd_show(args: argparse.Namespace) -> int:
    from l2bridge.ops.report import format_show

    if args.prometheus:
        from l2bridge.ops.metrics import exposition

        answer = _query(args, "show")
        sys.stdout.write(exposition(lambda: answer).decode())  # type: ignore[arg-type,return-value]
        return 0
    return _print_query(args, "show", format_show)


def cmd_reload(args: argparse.Namespace) -> int:
    from l2bridge.ops.service import RELOAD_TIMEOUT_S

    answer = _query(args, "reload", timeout_s=RELOAD_TIMEOUT_S + 5)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{answer['path']}: reloaded: {answer['changes']}")  # type: ignore[index]
    return 0


def cmd_fdb(args: argparse.Namespace) -> int:
    from l2bridge.ops.report import format_fdb

    if args.json:
        return _print_query(args, "fdb", format_fdb)
    entries = _query(args, "fdb")
    view = _query(args, "show")
    blocked = view.get("loop", {}).get("blocked", []) if isinstance(view, dict) else []
    print(format_fdb(entries, blocked))  # type: ignore[arg-type]
    return 0


def _print_query(args: argparse.Namespace, cmd: str, render) -> int:
    """Ask the running site and print its answer, as JSON or for people."""
    answer = _query(args, cmd)
    print(json.dumps(answer, indent=2) if args.json else render(answer))
    return 0


def cmd_tap(args: argparse.Namespace) -> int:
    from l2bridge.io.tap import delete_persistent, make_persistent

    if args.tap_command == "add":
        make_persistent(args.name, args.mode, user=args.user, group=args.group,
                        multi_queue=args.multi_queue)
        owner = f" owned by {args.user or '-'}:{args.group or '-'}" if (
            args.user or args.group) else ""
        queues = ", multi-queue" if args.multi_queue else ""
        print(f"persistent {args.mode} device {args.name} created{owner}{queues}")
    else:
        delete_persistent(args.name)
        print(f"persistent device {args.name} deleted")
    return 0


def _write_secret(text: str, path: str | None) -> int:
    """Write a key with mode 0600: to a new file, or to stdout (tightened when it is a file)."""
    import os
    import stat

    if path is None:
        fd = sys.stdout.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
        elif sys.stdout.isatty():
            print("l2bridge: warning: printing a secret key to a terminal", file=sys.stderr)
        print(text)
        return 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{path} exists; refusing to overwrite a key (remove it first)")
    except OSError as exc:
        return _fail(f"cannot create {path}: {exc.strerror}")
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text + "\n")
    return 0


def cmd_genkey(args: argparse.Namespace) -> int:
    from l2bridge.core import keys

    return _write_secret(keys.encode_key(keys.generate_private_key()), args.file)


def cmd_genpsk(args: argparse.Namespace) -> int:
    from l2bridge.core import keys

    return _write_secret(keys.encode_key(keys.generate_psk()), args.file)


def cmd_pubkey(args: argparse.Namespace) -> int:
    from l2bridge.core import keys

    private = keys.decode_key(sys.stdin.read(), what="private key on stdin")
    print(keys.encode_key(keys.public_key(private)))
    return 0


COMMANDS = {
    "up": cmd_up,
    "check": cmd_check,
    "show": cmd_show,
    "fdb": cmd_fdb,
    "reload": cmd_reload,
    "tap": cmd_tap,
    "genkey": cmd_genkey,
    "genpsk": cmd_genpsk,
    "pubkey": cmd_pubkey,
}

