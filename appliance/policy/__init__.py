"""The scope policy: its data model, and the checks a request passes before any process starts."""
