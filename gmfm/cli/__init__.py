"""The ``gmfm`` command line and the experiments it runs."""
