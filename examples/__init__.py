"""Runnable examples of dbrouter; each one is exercised by the test suite."""
