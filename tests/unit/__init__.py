"""Unit tests: one module of the core at a time, with no database server."""
