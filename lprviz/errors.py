"""The one exception type for errors a user can cause."""


class InputError(ValueError):
    """Bad user input: a file, a field or an option that is not what was expected.

    The message is one line that names the file/field and what was expected; the CLI
    prints it as is (exit status 2) and the app shows it with ``st.error``.
    """
