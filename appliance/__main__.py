"""The `appliance` command (and `python -m appliance`).

The garbage collector is off while the modules load: they build only long-lived objects
(classes, schemas, the SDK's models), and its passes over that growing heap cost about a tenth
of the import time. `appliance.cli.main` turns it back on, for `serve` once its own imports are
done (with those objects frozen, so later collections skip them too).
"""

import gc
import sys

gc.disable()

from appliance.cli import main  # noqa: E402 - after gc.disable(), on purpose


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
