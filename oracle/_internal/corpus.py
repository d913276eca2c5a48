"""Reproducers: readable files that replay a divergence exactly, written atomically.

A reproducer is one UTF-8 text file, `<signature-hash>.repro`, in sections:

    # forkspec reproducer v1
    [meta]            key = value lines: forkspec version, backend, fork strategy, planted bugs,
                      seed, signature, steps, platform (kernel)
    [divergence]      the checker's report, as printed
    [program]         the program in oracle/encoding.py's text form (the part that replays)
    [disassembly]     the compiled images' code, for humans
    [image iN]        each ELF image, base64 (what ran; replay recompiles and compares)

Key names in [meta] are a compatibility contract: add keys, never rename them.
"""
from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ForkspecError, InvalidProgram

HEADER = "# forkspec reproducer v1"
SUFFIX = ".repro"


@dataclass(frozen=True)
class Reproducer:
    meta: dict[str, str]
    divergence: str
    program_text: str
    disassembly: str = ""
    images: tuple[tuple[str, bytes], ...] = ()

    @property
    def signature(self) -> str:
        return self.meta.get("signature", "")


def signature_key(signature: tuple[str, ...] | str) -> str:
    """A short stable file name for a divergence signature."""
    text = signature if isinstance(signature, str) else " | ".join(signature)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dumps(repro: Reproducer) -> str:
    lines = [HEADER, "[meta]"]
    lines += [f"{key} = {value}" for key, value in repro.meta.items()]
    lines += ["[divergence]", repro.divergence.rstrip("\n"), "[program]", repro.program_text.rstrip("\n")]
    lines += ["[disassembly]", repro.disassembly.rstrip("\n")]
    for path, data in repro.images:
        encoded = base64.b64encode(data).decode()
        lines.append(f"[image {path}]")
        lines += [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    return "\n".join(lines) + "\n"


def loads(text: str, origin: str = "<reproducer>") -> Reproducer:
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise InvalidProgram(f"{origin}: line 1: expected {HEADER!r}, found {lines[0][:60]!r}" if lines
                             else f"{origin}: empty file, expected a forkspec reproducer")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("[") and line.rstrip().endswith("]"):
            name = line.strip()[1:-1]
            if name in sections:
                raise InvalidProgram(f"{origin}: line {number}: section [{name}] appears twice")
            current = sections[name] = []
        elif current is None:
            raise InvalidProgram(f"{origin}: line {number}: text before the first section")
        else:
            current.append(line)
    for required in ("meta", "program"):
        if required not in sections:
            raise InvalidProgram(f"{origin}: missing section [{required}]")
    meta: dict[str, str] = {}
    for line in sections["meta"]:
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidProgram(f"{origin}: [meta] line {line!r} is not 'key = value'")
        meta[key.strip()] = value.strip()
    images = []
    for name, body in sections.items():
        if name.startswith("image "):
            try:
                images.append((name[6:], base64.b64decode("".join(body), validate=True)))
            except ValueError as err:
                raise InvalidProgram(f"{origin}: [{name}] is not valid base64: {err}") from None
    return Reproducer(
        meta=meta,
        divergence="\n".join(sections.get("divergence", [])),
        program_text="\n".join(sections["program"]) + "\n",
        disassembly="\n".join(sections.get("disassembly", [])),
        images=tuple(images),
    )


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader (or a crash) sees the old contents or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(corpus: Path, repro: Reproducer) -> Path:
    """Store a reproducer under its signature's key, replacing an earlier (larger) one."""
    path = corpus / (signature_key(repro.signature) + SUFFIX)
    write_atomic(path, dumps(repro))
    return path


def load(path: Path) -> Reproducer:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ForkspecError(f"cannot read reproducer {path}: {err.strerror}") from None
    return loads(text, origin=str(path))


def list_corpus(corpus: Path) -> list[Path]:
    if not corpus.is_dir():
        return []
    return sorted(p for p in corpus.glob("*" + SUFFIX) if not p.name.startswith(".tmp-"))
