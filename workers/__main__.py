"""`python -m workers --consumer NAME [--certify | --review | --notify]`: one worker (certifier, reviewer, notifier)
process, settings from the environment.

`vaxline work` supervises several of these; a single one is what an
orchestrator (systemd, Kubernetes) or a crash test runs directly.
"""

import argparse
import socket

from monitoring.logs import configure
from vaxline import notify
from vaxline.config import Settings

from .process import run_process

parser = argparse.ArgumentParser(prog="python -m workers")
parser.add_argument("--consumer", default=f"{socket.gethostname()}-0", help="stable consumer name")
role = parser.add_mutually_exclusive_group()
role.add_argument("--certify", action="store_true", help="issue certificates instead of persisting doses")
role.add_argument("--review", action="store_true", help="keep review flags and registry statuses current")
role.add_argument("--notify", action="store_true", help="send citizens' SMS from the notifications outbox")
args = parser.parse_args()
configure()
settings = Settings.from_env()
if args.notify:
    try:  # a notifier without a gateway to send with says so once, rather than falling at every restart
        notify.notifier(settings)
    except notify.NoNotifier as e:
        parser.exit(2, f"python -m workers: {e}\n")
run_process(settings, args.consumer,
            "certify" if args.certify else "review" if args.review else "notify" if args.notify else "persist")
