"""Test helpers: tiny models, packed files, a loopback Hub server, evaluation kits, fixture paths."""
