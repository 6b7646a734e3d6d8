"""The environments of the comparison, virtualenvs in ``benchmarks/.envs/`` (git-ignored).

- ``dbrouter``: this project (``pip install -e``) and the tools: the stacks that need
  nothing else, the database fixture, the tenant scale runs, the fallback load client;
- one per peer: the peer from PyPI at a pinned version, with the project and the tools,
  so that its worker measures the peer, the hand-written dependency and ``get_db`` side by
  side in one process;
- ``plot``: matplotlib.

An environment is made on first use and made again when its requirements change.
"""

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DBROUTER", "ENVS_DIR", "PEERS", "PLOT", "Environment", "ready"]

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = REPO_ROOT / "benchmarks" / ".envs"
# Pinned: the figures are only comparable between runs on the same versions. Newer
# fastapi-async-sqlalchemy releases (0.8) need Python 3.12.
TOOLS = ("uvicorn==0.54.0", "httpx==0.28.1", "asgi-lifespan==2.1.0")


@dataclass(frozen=True)
class Environment:
    """A virtualenv of the comparison."""

    name: str
    requirements: tuple[str, ...]
    project: bool = True
    """Whether the project itself is installed too (editable)."""

    @property
    def path(self) -> Path:
        return ENVS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def stamp(self) -> str:
        """What the environment was made from: a new value makes it again."""
        made_of = [*self.requirements, f"project={self.project}", sys.version]
        return hashlib.sha256("\n".join(made_of).encode()).hexdigest()


DBROUTER = Environment("dbrouter", TOOLS)
PEERS = {
    env.name: env
    for env in (
        Environment("advanced-alchemy", ("advanced-alchemy==1.12.0", *TOOLS)),
        Environment("fastapi-sqla", ("fastapi-sqla==4.0.1", *TOOLS)),
        Environment("fastapi-async-sqlalchemy", ("fastapi-async-sqlalchemy==0.7.1.post3", *TOOLS)),
        Environment("fastapi-tenancy", ("fastapi-tenancy[postgres]==0.5.0", *TOOLS)),
    )
}
"""Each peer's environment, by the peer's name (also the name of its stack)."""
PLOT = Environment("plot", ("matplotlib>=3.8,<4",), project=False)


def ready(env: Environment) -> Path:
    """The Python of *env*, made first if it is missing or out of date."""
    stamp_file = env.path / ".made-from"
    if stamp_file.is_file() and stamp_file.read_text() == env.stamp and env.python.exists():
        return env.python
    print(f"  making the environment {env.path.relative_to(REPO_ROOT)} ...", file=sys.stderr)
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(env.path)], check=False)
    if made.returncode != 0:
        # Some distributions ship Python without ensurepip (Debian's python3-venv): make
        # the environment bare and let this Python's pip put pip into it.
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", "--without-pip", str(env.path)], check=True
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(env.python),
                "install",
                "--quiet",
                "pip",
            ],
            check=True,
        )
    packages = [*env.requirements, *(["-e", str(REPO_ROOT)] if env.project else [])]
    pip = [str(env.python), "-m", "pip", "--disable-pip-version-check", "--quiet", "--quiet"]
    subprocess.run([*pip, "install", *packages], check=True)
    stamp_file.write_text(env.stamp)
    return env.python
