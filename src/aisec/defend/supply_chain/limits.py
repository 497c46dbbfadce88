"""Resource limits that turn hostile files (zip bombs, deep nesting, endless opcode streams) into findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class ScanLimits:
    """Bounds on one top-level file's scan. Exceeding one gives an AISEC-SC-003 finding (never "safe")."""

    max_depth: int = 8  # containers inside containers (zip in tar in gzip ...)
    max_members: int = 100_000  # archive members over the whole file
    max_unpacked_bytes: int = 16 * GIB  # decompressed bytes over the whole file (zip bombs)
    max_ratio: int = 200  # decompressed / compressed size of one member, once past max_small_unpacked
    max_small_unpacked: int = 64 * MIB
    max_pickle_opcodes: int = 50_000_000  # per pickle stream
    max_pickle_stack: int = 100_000  # stack depth plus marks
    max_pickle_memo: int = 10_000_000
    max_header_bytes: int = 100 * MIB  # safetensors/GGUF/npy headers, JSON configs, templates
    max_nested_payloads: int = 100  # pickles found inside pickles, per file

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
