"""Exceptions for problems a user can fix; the CLI prints their message as one line and exits non-zero."""


class IFEditError(Exception):
    """Base class: the message names the problem and what is allowed."""


class InvalidInputError(IFEditError, ValueError):
    """A bad argument or input file."""


class SetupError(IFEditError, RuntimeError):
    """The machine cannot run the request as asked (no GPU, weights not downloadable, missing extra)."""


class NumericalError(IFEditError, RuntimeError):
    """The model's numbers overflowed (NaN or infinity): an image from them would be black or noise."""
