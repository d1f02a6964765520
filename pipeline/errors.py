"""The one exception type for problems a user can fix (bad file, bad parameter)."""


class InputError(ValueError):
    """Raised for user errors. Its message says what was wrong and what to do.

    The CLI prints it without a traceback and exits with code 2; the app shows it as `gr.Error`.
    """
