"""What crosses the pipe to an isolated child (requests, exceptions, functions by name); no processes.

A job's function travels as its module and qualified name (`isolation_problem` says at
enqueue whether a child could find it; `resolve_function` finds it there). An exception
travels as a `RemoteFailure` and is rebuilt as its own class where possible. No
processes, pipes or policy here: `jobcore.isolation` runs the pool and
`jobcore.isolation_child` the child's loop.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import JobcoreError, PermanentError


@dataclass(frozen=True)
class AttemptRequest:
    """What the parent sends to run one attempt: the function by name, and the job."""

    module: str
    qualname: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job_id: str
    name: str
    attempt: int
    memory_limit: Optional[int] = None          # bytes of address space (RLIMIT_AS)
    sys_path: Optional[tuple[str, ...]] = None   # the parent's sys.path when it changed
    check_details: bool = False                  # progress details must encode as JSON
    max_payload_bytes: Optional[int] = None      # and fit this many bytes


@dataclass(frozen=True)
class RemoteFailure:
    """An exception raised in the child, in a form that always crosses the pipe.

    `pickled` holds the instance only when it survived a pickle round trip with the same
    type and message; `args` and `state` (its `__dict__`) only when they pickle; `bases`
    names the exception classes in its MRO after its own, nearest first."""

    module: str
    qualname: str
    message: str
    traceback: str
    pickled: Optional[bytes] = None
    args: Optional[tuple[Any, ...]] = None
    state: Optional[dict[str, Any]] = None
    bases: tuple[tuple[str, str], ...] = ()


def describe_exception(exc: BaseException, traceback_text: str) -> RemoteFailure:
    """Pack `exc` for the trip to the parent (see `RemoteFailure`)."""
    cls = type(exc)
    message = _safe_str(exc)
    pickled = None
    try:
        data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        copy = pickle.loads(data)
        if type(copy) is cls and _safe_str(copy) == message:
            pickled = data
    except Exception:  # unpicklable, or a constructor that does not accept its own args
        pass
    return RemoteFailure(
        module=getattr(cls, "__module__", "builtins") or "builtins",
        qualname=getattr(cls, "__qualname__", cls.__name__),
        message=message, traceback=traceback_text, pickled=pickled,
        args=_if_picklable(tuple(exc.args)), state=_if_picklable(dict(getattr(exc, "__dict__", {}))),
        bases=tuple((base.__module__, base.__qualname__) for base in cls.__mro__[1:]
                    if isinstance(base, type) and issubclass(base, BaseException)),
    )


def resolve_function(module: str, qualname: str) -> Callable[..., Any]:
    """Import `module` and follow `qualname` to the job's callable; ImportError if absent."""
    try:
        target: Any = importlib.import_module(module)
    except Exception as exc:
        raise ImportError(f"the child process cannot import module {module!r} for job function"
                          f" {qualname!r}: {type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            hint = (" (a function defined under `if __name__ == '__main__':` does not exist when"
                    " the main module is imported in a child)" if module == "__main__" else "")
            raise ImportError(f"the child process found no {qualname!r} in module {module!r}{hint}") from None
    function: Callable[..., Any] = target
    return function


class NotIsolatable(PermanentError, TypeError):
    """The job's function cannot be found by name in a child process (a lambda, a nested
    function, a bound method...). Raised at enqueue; as an attempt's error, never retried."""

    def __init__(self, function: str, problem: str) -> None:
        super().__init__(f"{function} cannot run with isolation='process': {problem}")
        self.function = function
        self.problem = problem


class UnpicklableResult(PermanentError, TypeError):
    """An isolated job's return value that cannot be pickled back from its child process:
    the attempt fails, and retrying would return the same kind of value again."""


class RemoteError(JobcoreError):
    """An exception from a child whose class could not be rebuilt here.

    The instance's class is a subclass named like the original (so `error_type` reads the
    same) that also derives from the nearest base class importable here, so
    `isinstance(err, ConnectionError)` still holds for a subclass of it."""

    def __init__(self, message: str, type_module: str, type_qualname: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.type_module = type_module
        self.type_qualname = type_qualname
        self.remote_traceback = remote_traceback


def isolation_problem(func: Callable[..., Any]) -> Optional[str]:
    """None if a child process can import `func` by module and qualified name and call it;
    otherwise a sentence saying why not. Call it at enqueue for `isolation="process"`."""
    if not callable(func):
        return f"{func!r} is not callable"
    if isinstance(func, functools.partial):
        return ("a functools.partial has no importable name; register the function itself and"
                " pass arguments in the job")
    owner = getattr(func, "__self__", None)
    if (inspect.ismethod(func) or inspect.isbuiltin(func)) and owner is not None \
            and not isinstance(owner, type) and not inspect.ismodule(owner):
        return (f"it is a method bound to a {type(owner).__name__} instance, which a child process"
                " cannot look up by name; use a module-level function, classmethod or staticmethod")
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return ("it has no __module__ and __qualname__ to find it by (a callable object?);"
                " use a module-level function")
    if "<lambda>" in qualname:
        return ("it is a lambda, which has no name a child process can import; define it with def"
                " at module level")
    if "<locals>" in qualname:
        return (f"it is defined inside another function ({qualname}), so a child process cannot"
                " import it; move it to module level")
    loaded = sys.modules.get(module)
    if loaded is None:
        return f"its module {module!r} is not imported here"
    if module == "__main__" and not getattr(loaded, "__file__", None):
        return ("it is defined in an interactive __main__ (no script file), which a child process"
                " cannot import; move it into a module")
    target: Any = loaded
    for part in qualname.split("."):
        target = getattr(target, part, _MISSING)
        if target is _MISSING:
            return f"{module}.{qualname} does not lead back to it; define it at module level"
    if target is not func and target != func:
        return (f"{module}.{qualname} names a different object (decorated without functools.wraps,"
                " or redefined?); register the object that module attribute holds")
    return None


_MISSING = object()


def rebuild_exception(failure: RemoteFailure) -> BaseException:
    """The exception a child reported: the original class when it can be rebuilt with the
    same message, else a `RemoteError` subclass named like it."""
    if failure.pickled is not None:
        try:
            exc = pickle.loads(failure.pickled)
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # the class does not load here: fall through
            pass
    cls = _resolve(failure.module, failure.qualname)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            exc = cls.__new__(cls)
            exc.args = failure.args if failure.args is not None else (failure.message,)
            if failure.state:
                exc.__dict__.update(failure.state)
            if str(exc) == failure.message:
                return exc
        except Exception:  # a class with its own ideas about construction
            pass
    return _remote_class(failure)(failure.message, failure.module, failure.qualname, failure.traceback)


_remote_classes: dict[tuple[str, str], type[RemoteError]] = {}


def _remote_class(failure: RemoteFailure) -> type[RemoteError]:
    key = (failure.module, failure.qualname)
    known = _remote_classes.get(key)
    if known is not None:
        return known
    base: Optional[type] = None
    for module, qualname in failure.bases:
        found = _resolve(module, qualname)
        if isinstance(found, type) and issubclass(found, BaseException):
            base = found
            break
    namespace = {"__module__": failure.module, "__qualname__": failure.qualname}
    name = failure.qualname.rpartition(".")[2]
    cls: type[RemoteError] = type(name, (RemoteError,), namespace)
    if base is not None and not issubclass(RemoteError, base):
        try:
            cls = type(name, (RemoteError, base), namespace)
        except TypeError:  # incompatible layouts: the name and message still come through
            pass
    return _remote_classes.setdefault(key, cls)


def _resolve(module: str, qualname: str) -> Any:
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return None
    return target


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _if_picklable(value: Any) -> Any:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    return value
