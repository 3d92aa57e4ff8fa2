"""Exceptions shared by the library and the CLI.

``InputError`` is raised for bad user input (shapes, NaN, ranks, layouts) before any
work is done; the CLI turns it into one ``error:`` line and exit status 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input detected before any work or output was written."""


class FormatError(InputError):
    """A store on disk is missing, has an unknown layout or an unsupported format version."""


class DataError(InputError):
    """A store's data are damaged or incomplete (a missing chunk, a bad checksum, a chunk that
    does not decode); the message names the store, the array and the chunk."""
