"""One module per ``sodp`` command, each with ``add_parser(subparsers)``."""
