"""Import mlx-lm's model building blocks without its package `__init__`.

`mlx_lm/__init__.py` imports its generate/convert entry points and with them `transformers`
(2-7 s here), though we only use `mlx_lm.models`. Until something else asks for the package's
own API, `mlx_lm` is registered unexecuted; the first attribute lookup on it (`mlx_lm.load`, an
`import mlx_lm` elsewhere followed by use) runs the real `__init__` then, so nothing changes for
other users of mlx-lm in the same process.
"""

from __future__ import annotations

import importlib.util
import sys
import types


class _DeferredPackage(types.ModuleType):
    def __getattr__(self, name):
        spec = object.__getattribute__(self, "__spec__")
        self.__class__ = types.ModuleType  # run the real __init__ once, then behave normally
        spec.loader.exec_module(self)
        return getattr(self, name)


def defer_package_init(name: str = "mlx_lm"):
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return  # not installed: the ordinary import error follows where it is used
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredPackage
    sys.modules[name] = module
