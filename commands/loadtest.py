"""`vaxline loadtest sessions|day|overload|prepare`: the Locust capacity proof, run as its own program.

The runner is `python -m loadtests` (loadtests/runner.py): it needs the `loadtest` extra (Locust and
gevent), which a production install of the service does not carry, and it sits beside the commands,
not below them. This command becomes the runner (exec), with every argument as given: its exit code is
the runner's, and a signal sent to this process (Ctrl-C, a CI's SIGTERM) reaches the runner, which stops
Locust and the stack on its way out. (A child it waited for was left running when this process was killed.)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import NoReturn

from .common import ConfigError


def add_parsers(commands) -> None:
    loadtest = commands.add_parser(
        "loadtest", add_help=False, help="capacity proof: Locust against the stack, with thresholds"
        " (sessions, day, overload; prepare); `vaxline loadtest -h` for its options")
    loadtest.set_defaults(arguments=[])  # commands.main hands it what follows its name
    loadtest.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args) -> NoReturn:
    if importlib.util.find_spec("locust") is None:
        raise ConfigError("the load tests need Locust: pip install 'vaxline[loadtest]'")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "loadtests", "--data-dir", str(args.data_dir), *args.arguments])
