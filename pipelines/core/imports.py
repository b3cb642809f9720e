"""Keep an optional, installed library out of another library's eager imports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """Make `import name` raise ImportError inside the block, for names not imported yet.

    A `None` entry in `sys.modules` is Python's own marker for "import fails". Names already
    imported stay as they are, so code that really uses the module keeps it.
    """
    hidden = [name for name in names if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
