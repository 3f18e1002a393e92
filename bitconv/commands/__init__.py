"""CLI command groups that live beside cli.py; each module has `register(app)`, called by bitconv.cli."""
