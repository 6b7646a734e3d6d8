"""Alembic script directories: their configuration, built in code (there is no
``alembic.ini``), and their revisions."""

from __future__ import annotations

import argparse
from functools import cached_property
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from ..errors import ConfigurationError
from .environment import Binding, bind

__all__ = ["Scripts", "alembic_config"]


def alembic_config(directory: Path) -> Config:
    """The Alembic configuration of the script *directory*, with no ``alembic.ini``."""
    # Alembic's messages ("Generating ... done") stay quiet: dbrouter reports itself.
    config = Config(cmd_opts=argparse.Namespace(quiet=True))
    # Values are interpolated by configparser: a literal % is written %%.
    config.set_main_option("script_location", str(directory).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


class Scripts:
    """The script directory at *path*, named by the settings key *key*
    (``databases.primary.migrations``, ``tenancy.migrations``)."""

    def __init__(self, path: Path, *, key: str) -> None:
        path = path.expanduser().resolve()
        if not (path / "env.py").is_file():
            raise ConfigurationError(
                f"{key}: {path} is not an Alembic script directory (it has no env.py); "
                f"dbrouter migrate init {path} makes one",
                problems=[(key, "not an Alembic script directory")],
            )
        self.path = path
        self.key = key
        try:
            self.directory = ScriptDirectory.from_config(alembic_config(path))
            self.heads = tuple(sorted(self.directory.get_heads()))
        except (CommandError, RevisionError, KeyError) as exc:
            # A KeyError names a revision another one follows that is not there.
            raise ConfigurationError(
                f"{key}: {path}: its revisions cannot be read ({type(exc).__name__}: {exc})"
            ) from exc

    @cached_property
    def revisions(self) -> frozenset[str]:
        """Every revision of the directory."""
        return frozenset(script.revision for script in self.directory.walk_revisions())

    def config(self, binding: Binding | None = None) -> Config:
        """A new Alembic configuration of the directory, handing *binding* to its
        ``env.py``."""
        config = alembic_config(self.path)
        return config if binding is None else bind(config, binding)
