"""The one exception type whose message is shown to users as is."""
from .contract.protocol import EXIT_BAD_INPUT


class MicroFaceError(Exception):
    """A problem with the user's input or setup. ``str(err)`` is one line naming it and, where
    there is one, the fix. ``code`` is the process exit status the CLI uses."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(" ".join(message.split()))
        self.code = code
