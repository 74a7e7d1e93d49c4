"""YAML documents (the policy, the capability policy) read with libyaml, reported like PyYAML.

PyYAML's pure-Python safe loader took about 8 ms of each start-up for the default policy; its C
loader (libyaml, in PyYAML's wheels) reads the same document in under 2 ms, to the same values.
Its errors lack the quoted line and the caret under the fault, so a document the C loader
refuses is read again by the pure-Python loader, whose error is the one raised.
"""

from __future__ import annotations

from typing import Any

import yaml

# Without libyaml (a PyYAML built from source without it), the pure-Python loader does both.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """yaml.safe_load's result for `text`; raises what yaml.safe_load raises."""
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 (a safe loader, C or Python)
    except yaml.YAMLError:
        return yaml.safe_load(text)
