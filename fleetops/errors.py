"""The exceptions fleetops raises.

`UserError` and its subclasses are the caller's mistakes: the message names the
value and what is allowed. `PlatformError` is a fault of the system underneath
(a database, a cloud API) that a retry may cure.
"""


class FleetopsError(Exception):
    """Base of every fleetops exception."""


class UserError(FleetopsError, ValueError):
    """Bad input: a spec, an argument, a data source. Fix the input, not the system."""


class SpecError(UserError):
    """A fleet spec is invalid. `problems` lists every problem, one line each."""

    def __init__(self, problems: list[str], source: str = "fleet spec"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


class DataValidationError(UserError):
    """The data does not match the fleet spec. `report` is the full readable report."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"data validation found {len(problems)} problem(s):\n{lines}")


class NotFoundError(UserError, LookupError):
    """A model, version or alias that does not exist."""


class RegistryRuleError(UserError):
    """A request the Vertex Model Registry would refuse (alias format, last version, ...)."""


class PlatformError(FleetopsError, RuntimeError):
    """A fault in the platform underneath (database, cloud API); may succeed on retry."""
