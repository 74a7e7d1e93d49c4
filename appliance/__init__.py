import time as _time

# The start-up clock's zero (appliance.startup): this is the first appliance code any entry
# point runs. CLOCK_BOOTTIME is the clock of /proc/<pid>/stat's starttime.
ENTERED_MONOTONIC = _time.monotonic()
ENTERED_BOOTTIME = _time.clock_gettime(_time.CLOCK_BOOTTIME)

__version__ = "0.1.0"
