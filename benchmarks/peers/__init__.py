"""The peers' apps: each module builds the benchmark's app the way that library's own
documentation sets it up, and is imported only in that library's environment.

The libraries are imported with ``importlib`` and handled as ``Any``: the project's own
environment, where mypy runs, does not have them, and their types are not what is being
checked here.
"""
