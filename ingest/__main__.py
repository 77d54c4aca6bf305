"""`python -m ingest --port P`: one ingest process, settings from the environment."""

import argparse

from monitoring.logs import configure
from vaxline import otp
from vaxline.config import Settings
from vaxline.filemodes import LooseMode

from .server import run_process, startup_checks

parser = argparse.ArgumentParser(prog="python -m ingest")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8080)
args = parser.parse_args()
configure()
settings = Settings.from_env()
try:  # as `vaxline serve`: no start without a sender of one-time codes, chosen by name
    otp.sender(settings)
except otp.NoOtpSender as e:
    parser.exit(2, f"python -m ingest: {e}\n")
try:  # a malformed setting or a private file open to others: named here, not met by every request
    startup_checks(settings)
except (ValueError, LooseMode) as e:
    parser.exit(2, f"python -m ingest: {e}\n")
run_process(settings, args.host, args.port)
