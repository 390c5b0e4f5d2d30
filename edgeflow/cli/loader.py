"""Load a flow from ``path/to/flow.py``, ``path.py:name`` or ``module:name``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from edgeflow.errors import FlowLoadError
from edgeflow.flow.plan import Flow


def _split(ref: str) -> tuple[str, str | None]:
    # "C:\\x.py" style drive letters do not occur here; the last ':' separates the name
    if ":" in ref:
        target, name = ref.rsplit(":", 1)
        return target, name or None
    return ref, None


def _import_path(path: Path) -> ModuleType:
    name = f"edgeflow_user_flow_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FlowLoadError(f"cannot load {path} as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.resolve().parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    spec.loader.exec_module(module)
    return module


def load_flow(ref: str) -> Flow:
    """The Flow object ``ref`` points at; FlowLoadError says what to fix."""
    target, name = _split(ref)
    is_path = target.endswith(".py") or os.sep in target or "/" in target
    try:
        if is_path:
            path = Path(target)
            if not path.is_file():
                raise FlowLoadError(
                    f"flow file {target!r} does not exist; give a path to a .py file, 'file.py:name' or 'module:name'"
                )
            module = _import_path(path)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
    except FlowLoadError:
        raise
    except ModuleNotFoundError as exc:
        if not is_path and exc.name == target.split(".")[0]:
            raise FlowLoadError(
                f"no module named {target!r}; give a path to a .py file or an importable 'module:name'"
            ) from None
        raise FlowLoadError(_user_error(ref, exc)) from None
    except Exception as exc:  # the user's file raised while building the flow
        raise FlowLoadError(_user_error(ref, exc)) from None
    flows = {k: v for k, v in vars(module).items() if isinstance(v, Flow)}
    if name is not None:
        obj = getattr(module, name, None)
        if not isinstance(obj, Flow):
            found = ", ".join(sorted(flows)) or "none"
            raise FlowLoadError(f"{target} has no Flow named {name!r} (flows found: {found})")
        return obj
    if "flow" in flows:
        return flows["flow"]
    if len(flows) == 1:
        return next(iter(flows.values()))
    if not flows:
        raise FlowLoadError(f"{target} defines no Flow; create one with flow = Flow('name')")
    raise FlowLoadError(
        f"{target} defines several flows ({', '.join(sorted(flows))}); pick one with {target}:NAME"
    )


def _user_error(ref: str, exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = next(
        (
            f"{f.filename}:{f.lineno}"
            for f in reversed(tb)
            if "edgeflow" not in Path(f.filename).parts[-2:-1]
        ),
        "",
    )
    return f"loading {ref} failed at {where}: {type(exc).__name__}: {exc}"
