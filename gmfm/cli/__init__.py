"""The ``gmfm`` command line: parses arguments and calls :mod:`gmfm.experiments`."""
