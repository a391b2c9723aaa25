"""The one exception type that means "the user asked for something we cannot do" (shown as a message)."""


class UserError(ValueError):
    """A problem with the user's input or environment, reported as a clear message instead of a traceback."""
