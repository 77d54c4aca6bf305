"""`vaxline loadtest sessions|day|overload|prepare`: the Locust capacity proof, run as its own program.

The runner is `python -m loadtests` (loadtests/runner.py): it needs the `loadtest` extra (Locust and
gevent), which a production install of the service does not carry, and it sits beside the commands,
not below them. This command hands it every argument as given, and answers with its exit code.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from .common import ConfigError


def add_parsers(commands) -> None:
    loadtest = commands.add_parser(
        "loadtest", add_help=False, help="capacity proof: Locust against the stack, with thresholds"
        " (sessions, day, overload; prepare); `vaxline loadtest -h` for its options")
    loadtest.set_defaults(arguments=[])  # commands.main hands it what follows its name
    loadtest.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args) -> int:
    if importlib.util.find_spec("locust") is None:
        raise ConfigError("the load tests need Locust: pip install 'vaxline[loadtest]'")
    return subprocess.call([sys.executable, "-m", "loadtests", "--data-dir", str(args.data_dir), *args.arguments])
