"""The command line: parse, call, print. `main` builds the parser; each command's module turns its arguments into
calls of the packages below and prints what they return (the only printing in the package).

Offers: `main.main` (the `sweeper` entry point), `search` (search and confirm), `inputs` (data, backbone, cache).
"""
