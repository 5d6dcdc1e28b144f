"""One constructor path for the modules that have a ``Config``: ``Module(config, dims)``.

The config is the module's description and its sizes are the model's (:class:`ModelDims`), so
``Module(config, dims)`` -- what ``config.build(dims)`` calls -- is the only constructor the library
uses. For people building one module by hand, ``Module.create(...)`` takes the config's fields as
keyword arguments (and sizes as numbers), builds the config and calls that path; calling the class
with anything but a config first (README's ``CausalSelfAttention(512, 8, pe=...)``,
``RotaryEmbedding(64)``) is the same as calling ``create``.
"""

from __future__ import annotations

from typing import Any

from posenc.spec import Spec


class BuiltFromConfig(type):
    """Metaclass that sends ``Cls(*args)`` to ``Cls.create(*args)`` unless the first argument is a config."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if isinstance(args[0] if args else kwargs.get("config"), Spec):
            return super().__call__(*args, **kwargs)
        return cls.create(*args, **kwargs)
