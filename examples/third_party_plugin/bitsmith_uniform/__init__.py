"""Example third-party bitsmith plugin (see docs/plugins.md)."""
