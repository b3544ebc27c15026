"""The errors a Plait run reports to the user as a message (the CLI prints it without a traceback)."""


class RunError(RuntimeError):
    """A run cannot start or go on: it diverged, its output directory is in use or holds another run, or a
    checkpoint is damaged. The message says what happened and what to do."""
