"""Fails at import time, on purpose."""

raise RuntimeError("this module is broken on purpose")
