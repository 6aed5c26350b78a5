"""What a secret is and how it never leaves: secret references (``secrets``), the redactor (``redact``)
and the response scrubber (``scrub``).

The lowest layer: imports nothing of authproxy, so that every other package,
the error bodies of ``errors`` included, may pass what it prints through the
one redactor.
"""
