"""`python -m ingest --port P`: one ingest process, settings from the environment."""

import argparse

from monitoring.logs import configure
from vaxline.config import Settings

from .server import run_process

parser = argparse.ArgumentParser(prog="python -m ingest")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8080)
args = parser.parse_args()
configure()
run_process(Settings.from_env(), args.host, args.port)
