"""The scanner fleet on NATS JetStream (fleet issue): the bus connection, and in time the front and segment roles.

Opt-in: nothing here is imported unless a fleet setting asks for it (the standalone appliance
with its SQLite store is the embedded default).
"""
