"""Names a package exports but imports only on first use (PEP 562), so that importing the
package stays light: no PyTorch for ``--help``, a Slurm job or the engine's config."""

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, whose public names map to
    the submodule (relative, such as ``".losses"``) that defines each."""
    names = sorted(exports)

    def __getattr__(name: str):
        if name in exports:
            module = import_module(package)
            value = getattr(import_module(exports[name], package), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(import_module(package))) | set(names))

    return names, __getattr__, __dir__
