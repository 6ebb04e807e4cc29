"""What every layer may use: the exceptions, the settings and the log lines.

Nothing here imports another part of the project (`packager.core` only) or any I/O library.
"""
