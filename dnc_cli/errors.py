class UsageError(Exception):
    """Bad user input: printed as one line, exit status 2, no traceback."""
