"""Example third-party bitsmith plugin (see plugin.py)."""
