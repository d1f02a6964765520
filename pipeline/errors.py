"""The one exception type for problems a user can fix (bad file, bad parameter)."""


class InputError(ValueError):
    """Raised for user errors. Its message says what was wrong and what to do.

    The CLI prints it without a traceback and exits with code 2; the app shows it as `gr.Error`.
    """


class AudioTooLong(InputError):
    """Speech over a length limit; `seconds` and `limit` let a caller word its own advice."""

    def __init__(self, seconds: float, limit: float):
        self.seconds, self.limit = seconds, limit
        super().__init__(f"the audio is {seconds:.1f} s long; the limit is {limit:g} s: trim it")
