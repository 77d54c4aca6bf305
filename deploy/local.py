"""A deployment's settings as a command finds them: the environment, or a running `vaxline run` nearby.

`vaxline run` on its embedded services writes their URLs to DATA_DIR/urls.json while it runs, so that
the other commands pointed at the same data folder reach the same Postgres and Redis.
"""

from __future__ import annotations

import json
from pathlib import Path

from vaxline.config import Settings


class ConfigError(Exception):
    """The deployment cannot be found or the command was misused: a usage error (exit 2)."""


def urls_file(data_dir: Path) -> Path:
    return data_dir / "urls.json"


def settings_for(data_dir: Path) -> Settings:
    """Settings from the environment, falling back to a running `vaxline run`'s embedded services."""
    settings = Settings.from_env(data_dir=data_dir)
    if settings.database_url and settings.redis_url:
        return settings
    urls = urls_file(data_dir)
    if urls.exists():
        found = json.loads(urls.read_text())
        return Settings.from_env(data_dir=data_dir, database_url=settings.database_url or found["database_url"],
                                 redis_url=settings.redis_url or found["redis_url"])
    raise ConfigError("DATABASE_URL and REDIS_URL must be set (postgresql://... and redis://...),"
                      " or `vaxline run` must be running on its embedded services in --data-dir")


def announce(settings: Settings) -> None:
    """Tell the commands run beside this `vaxline run` where its services are."""
    urls_file(settings.data_dir).write_text(json.dumps({"database_url": settings.database_url,
                                                        "redis_url": settings.redis_url}))


def withdraw(data_dir: Path) -> None:
    urls_file(data_dir).unlink(missing_ok=True)
