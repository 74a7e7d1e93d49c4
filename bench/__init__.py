"""`scripts/bench`: the appliance's performance figures, measured against a lab it builds itself.

Every scan goes to one lab target container that the benchmark starts on an `internal` Docker
network it creates, by that container's exact IP; the scope policy allows that one address and
nothing else. The host-mode flood figure runs a fake scanner that sends no traffic, in an empty
network namespace. The job store figure scans nothing (its results come from an XML it writes).
The host comparison and the fleet's figures scan only a listener on 127.0.0.1 that they start
inside an empty network namespace (loopback only; the fleet's nats-server lives there too).
Every container, network and volume is removed in `finally` blocks.
"""
