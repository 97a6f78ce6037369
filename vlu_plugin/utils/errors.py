"""The one error class for mistakes in what a user handed to `vlu`: `vlu <cmd>: error: <message>`, exit 2.

Raise it with a message that names the file or option and what is wrong; `vlu_cli.main` prints it
to stderr without a traceback. It is a ValueError so callers that already catch ValueError keep working.
"""


class UserError(ValueError):
    """A bad option file, folder or flag: reported in one sentence, not as a traceback."""
