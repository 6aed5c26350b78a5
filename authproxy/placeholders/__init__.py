"""Placeholders: what a sandboxed workload holds instead of a secret.

The route table's placeholders compiled into one scan (``index``), swapped
for the secret on their own route's requests (``swap``), refused anywhere
else and where a route requires one (``guard``), watched for in a blind
tunnel's first bytes (``tunnelscan``), and handed out by a stubbed token
endpoint (``stub``). Generated ones live in the state dir (``disk.placeholders``).
"""
