"""What a secret is and how it never leaves: secret references (``secrets``), the redactor (``redact``),
the response scrubber (``scrub``), and names and sealed values for a shared store (``sealing``).

The lowest layer: imports nothing of authproxy, so that every other package,
the error bodies of ``errors`` included, may pass what it prints through the
one redactor.
"""
