"""Errors edgeflow raises at users. Every message says what was wrong and how to fix it."""

from __future__ import annotations


class EdgeflowError(Exception):
    """Base class of every error edgeflow raises on purpose."""


class FlowValidationError(EdgeflowError):
    """A flow is not valid. ``problems`` holds one line per problem, each naming the step."""

    def __init__(self, flow_name: str, problems: list[str]) -> None:
        self.flow_name = flow_name
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"flow {flow_name!r} is not valid ({len(self.problems)} problem(s)):\n{lines}"
        )


class DurationError(EdgeflowError, ValueError):
    """A duration string could not be parsed."""


class BatchError(EdgeflowError, ValueError):
    """A batch's arrays do not fit together (wrong dtype, shape or length)."""


class UserInputError(EdgeflowError):
    """What the user asked for cannot be done as asked (an option's value, a busy port): the
    command line reports it as one line and exits 2, like any usage error."""


class MetricsPortError(UserInputError):
    """The metrics port (``--metrics-port``) cannot be listened on."""


class FlowLoadError(EdgeflowError):
    """A flow file or module could not be loaded."""


class MissingExtraError(EdgeflowError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'edgeflow[{extra}]'"
        )
