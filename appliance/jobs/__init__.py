"""Scan jobs: the durable state of every scan (model, store interface, SQLite store, manager, diff)."""
