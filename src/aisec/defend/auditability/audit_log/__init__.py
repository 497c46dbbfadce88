"""The tamper-evident audit log (docs/audit.md): an append-only record of what aisec ran, on which model and data,
and what it found, kept as an RFC 9162 Merkle tree with Ed25519-signed checkpoints (C2SP tlog-checkpoint).

`entry` makes an entry's canonical bytes, `merkle` the tree and its proofs, `checkpoint` and `keys` the signed
notes and their keys, `store`, `sqlite_store` and `postgres_store` where the rows live, `log` appends and proves,
`verify` checks a whole log. Nothing is imported here: importing the package loads neither `cryptography` (first
imported when a signature is made or checked) nor a database driver.
"""
