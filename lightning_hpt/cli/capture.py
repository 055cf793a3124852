"""``--script train.py``: the LightningCLI call a project's script makes, taken without running it."""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lightning_hpt.exceptions import ConfigurationError

__all__ = ["CLICall", "capture_cli", "cli_scripts"]


class CLICall(NamedTuple):
    """A LightningCLI construction as a script makes it: the class and its arguments (``args``/``run`` left out)."""

    cli_class: type
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


class _Captured(BaseException):  # not an Exception: a script's own ``except Exception`` must not swallow it
    def __init__(self, call: CLICall) -> None:
        super().__init__("LightningCLI call captured")
        self.call = call


_CAPTURING: list[bool] = []  # non-empty while a script runs under capture_cli


def _install(cli: type) -> None:
    """Give LightningCLI a ``__new__`` that, while capturing, takes the call instead of constructing.

    It stays in place (outside a capture it constructs as usual): CPython cannot give a class its
    inherited ``object.__new__`` back once ``__new__`` was assigned.
    """
    if "__new__" in cli.__dict__:
        return
    original = cli.__new__

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if _CAPTURING:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("args", "run")}
            raise _Captured(CLICall(cls, args, kwargs))
        return original(cls) if original is object.__new__ else original(cls, *args, **kwargs)

    cli.__new__ = __new__  # type: ignore[method-assign]


def _main_blocks(tree: ast.Module) -> list[ast.stmt]:
    """The bodies of the script's top-level ``if __name__ == "__main__":`` blocks."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
        ):
            out.extend(node.body)
    return out


def capture_cli(path: str | os.PathLike) -> CLICall:
    """Import the script as a module (named after its file) and run its ``__main__`` block up to the
    LightningCLI construction, which is taken instead of run: nothing trains, nothing is parsed.

    Classes the script defines keep the module's name (``train.MyModel``), so trials import them
    by reference. The script's directory goes on the Python path, as ``python train.py`` puts it.

    Raises:
        ConfigurationError: the file is missing, or the script ends without constructing a LightningCLI.
    """
    from lightning.pytorch.cli import LightningCLI

    script = Path(path).resolve()
    if not script.is_file():
        raise ConfigurationError(f"--script={os.fspath(path)!r} is not a file; give the script that calls LightningCLI")
    name = script.stem
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    _install(LightningCLI)
    argv = sys.argv
    _CAPTURING.append(True)
    try:
        sys.argv = [str(script)]
        sys.modules[name] = module  # classes defined in the script are found by reference (pickling, class_path)
        code = script.read_text()
        spec.loader.exec_module(module)
        main = ast.Module(body=_main_blocks(ast.parse(code)), type_ignores=[])
        exec(compile(main, str(script), "exec"), module.__dict__)  # the script's `if __name__ == "__main__":` body
    except _Captured as c:
        return c.call
    except SystemExit as e:
        raise ConfigurationError(
            f"--script={os.fspath(path)!r} exited ({e.code}) before it constructed a LightningCLI; give a script"
            " whose `if __name__ == '__main__':` block constructs it"
        ) from None
    finally:
        sys.argv = argv
        _CAPTURING.pop()
    raise ConfigurationError(
        f"--script={os.fspath(path)!r} ran without constructing a LightningCLI; give the script that calls"
        " LightningCLI(...) (under `if __name__ == '__main__':` or at the top level)"
    )


def script_flag(argv: Sequence[str]) -> str | None:
    """The value of ``--script`` in ``argv``, if given."""
    for i, arg in enumerate(argv):
        if arg == "--script" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--script="):
            return arg.split("=", 1)[1]
    return None


def cli_scripts(directory: str | os.PathLike = ".") -> list[str]:
    """The ``.py`` files in ``directory`` that construct a LightningCLI (to name in a hint), sorted."""
    out = []
    for path in sorted(Path(directory).glob("*.py")):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        if "LightningCLI" in text and ("cli_main" in text or "__main__" in text):
            out.append(path.name)
    return out
