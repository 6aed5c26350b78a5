"""Reading ``routes.yaml``: the ``Section`` reader every key goes through (``yamlreader``) and its problems list.

Imports only ``secrecy`` (a value may be a secret reference, and the redactor
learns each secret as it is read). Each package parses its own section with
these; ``authproxy.config`` assembles them.
"""
