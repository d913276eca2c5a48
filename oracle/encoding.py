"""Programs as text: the format of reports, the corpus and `forkspec replay`.

`dumps(program)` writes one step per line, results named `rN = ...`, a fork-like step's
continuations indented under it, flags by name; `loads(text)` reads it back and validates, naming
the line of any error. `loads(dumps(p)) == p` for every program. Example:

    # forkspec-program v1
    r1 = mmap(0, 0x2000, rw, private|anon)
    store(r1+0x1000, 0x2a)
    r2 = fork
      child:  store(r1, 7); observe; exit(3)
      parent:
        r3 = wait4(r2)
        load(r1)
        exit(0)
    image 1 (dyn, shared, bss=0x10, mutation=None):
    exit(42)

Grammar. Lines are steps, comments (`#` to the end of the line) or blank. A step is
`[rN = ] op[(arg, ...)]`; zero-argument ops may omit the parentheses; `wait4`'s options may be
omitted (0). An argument is an integer (decimal or 0x-hex, optionally negative), a reference `rN`,
`rN+off` or `rN-off`, or — where the argument is a set of flags — `|`-joined names and integers:
prot (`none`, any of `r`, `w`, `x` as one word, e.g. `rwx`), mmap flags (`private`, `shared`,
`anon`, `fixed`, ...), wait4 options (`wnohang`, ...), clone flags (`vm`, `vfork`, `sigchld`, ...).
Several steps may share a line, joined by `;`. A fork-like step ends its list; its `child:` and
`parent:` labels follow, indented two spaces deeper, each with its steps either on the label's
line or on the lines below it, two spaces deeper still. `image K (etype, layout, key=value...):`
starts image K's steps (image 0's header may be left out when its ElfSpec is the default); keys:
base, bss, text, stack, mutation.

`strict=False` (reading an old or hand-edited corpus): the version header may be missing or
name another version, and unknown image keys are ignored. Both modes always validate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from ..specs import abi
from .errors import InvalidProgram
from .program import FORK_OPS, OPS, ElfSpec, Image, Program, Ref, Step

__all__ = ["HEADER", "dumps", "loads", "format_step"]

HEADER = "# forkspec-program v1"
INDENT = 2

# --- Flag vocabularies -------------------------------------------------------------------------
_MMAP_TYPES = {abi.MAP_SHARED: "shared", abi.MAP_PRIVATE: "private", abi.MAP_SHARED_VALIDATE: "shared_validate",
               abi.MAP_DROPPABLE: "droppable"}
_MMAP_BITS = {"fixed": abi.MAP_FIXED, "anon": abi.MAP_ANONYMOUS, "growsdown": abi.MAP_GROWSDOWN,
              "denywrite": abi.MAP_DENYWRITE, "executable": abi.MAP_EXECUTABLE, "locked": abi.MAP_LOCKED,
              "noreserve": abi.MAP_NORESERVE, "populate": abi.MAP_POPULATE, "nonblock": abi.MAP_NONBLOCK,
              "stack": abi.MAP_STACK, "hugetlb": abi.MAP_HUGETLB, "sync": abi.MAP_SYNC,
              "fixed_noreplace": abi.MAP_FIXED_NOREPLACE}
_WAIT_BITS = {"wnohang": abi.WNOHANG, "wuntraced": abi.WUNTRACED, "wcontinued": abi.WCONTINUED,
              "wnothread": abi.WNOTHREAD, "wall": abi.WALL, "wclone": abi.WCLONE}
_CLONE_BITS = {"vm": abi.CLONE_VM, "fs": abi.CLONE_FS, "files": abi.CLONE_FILES, "sighand": abi.CLONE_SIGHAND,
               "vfork": abi.CLONE_VFORK, "parent": abi.CLONE_PARENT, "thread": abi.CLONE_THREAD,
               "settls": abi.CLONE_SETTLS, "parent_settid": abi.CLONE_PARENT_SETTID,
               "child_cleartid": abi.CLONE_CHILD_CLEARTID, "child_settid": abi.CLONE_CHILD_SETTID}
_CLONE_SIGNALS = {int(abi.Signal.SIGCHLD): "sigchld"}

# (op, argument index) -> flag kind
_FLAG_ARGS = {("mmap", 2): "prot", ("mmap", 3): "mmap", ("mprotect", 2): "prot",
              ("wait4", 1): "wait", ("clone", 0): "clone"}
# Argument names, for messages ("line 3: mmap length='0x1g' is not a number").
ARG_NAMES = {"mmap": ("addr", "length", "prot", "flags"), "munmap": ("addr", "length"),
             "mprotect": ("addr", "length", "prot"), "brk": ("addr",), "write": ("fd", "addr", "length"),
             "wait4": ("pid", "options"), "exit": ("code",), "exit_group": ("code",), "execve": ("image",),
             "clone": ("flags",), "load": ("addr",), "store": ("addr", "value"), "fetch": ("addr",)}
# Trailing arguments that may be left out, with their value.
_DEFAULTS = {"wait4": (0,)}


def _int_text(value: int) -> str:
    if -10 < value < 10:
        return str(value)
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def _bits_text(value: int, names: dict[str, int], parts: list[str]) -> list[str]:
    rest = value
    for name, bit in names.items():
        if rest & bit == bit:
            parts.append(name)
            rest &= ~bit
    if rest:
        parts.append(f"{rest:#x}")
    return parts


def _flags_text(kind: str, value: int) -> str:
    if value < 0 or value == 0 and kind != "prot":
        return _int_text(value)
    parts: list[str] = []
    if kind == "prot":
        letters = "".join(ch for ch, bit in (("r", 1), ("w", 2), ("x", 4)) if value & bit)
        parts.append(letters or "none")
        if value & ~7:
            parts.append(f"{value & ~7:#x}")
    elif kind == "mmap":
        kind_bits = value & abi.MAP_TYPE
        if kind_bits in _MMAP_TYPES:
            parts.append(_MMAP_TYPES[kind_bits])
        elif kind_bits:
            parts.append(f"{kind_bits:#x}")
        _bits_text(value & ~abi.MAP_TYPE, _MMAP_BITS, parts)
    elif kind == "wait":
        _bits_text(value, _WAIT_BITS, parts)
    else:
        signal = value & abi.CSIGNAL
        _bits_text(value & ~abi.CSIGNAL, _CLONE_BITS, parts)
        if signal in _CLONE_SIGNALS:
            parts.append(_CLONE_SIGNALS[signal])
        elif signal:
            parts.append(f"{signal:#x}")
    return "|".join(parts)


def _arg_text(op: str, index: int, arg: int | Ref) -> str:
    if isinstance(arg, Ref):
        if arg.offset == 0:
            return f"r{arg.result}"
        sign = "-" if arg.offset < 0 else "+"
        return f"r{arg.result}{sign}{_int_text(abs(arg.offset))}"
    kind = _FLAG_ARGS.get((op, index))
    return _flags_text(kind, arg) if kind else _int_text(arg)


def format_step(step: Step) -> str:
    """One step as text, without its continuations: `r3 = mmap(0, 0x1000, rw, private|anon)`."""
    args = list(step.args)
    defaults = _DEFAULTS.get(step.op, ())
    first_default = OPS[step.op] - len(defaults)
    while len(args) > first_default and not isinstance(args[-1], Ref) \
            and args[-1] == defaults[len(args) - 1 - first_default]:
        args.pop()                                  # trailing arguments equal to their default
    text = step.op
    if OPS[step.op]:
        text += f"({', '.join(_arg_text(step.op, i, a) for i, a in enumerate(args))})"
    return text if step.result is None else f"r{step.result} = {text}"


def _dump_list(steps: tuple[Step, ...], level: int, out: list[str]) -> None:
    pad = " " * level
    for step in steps:
        out.append(pad + format_step(step))
        if step.op in FORK_OPS:
            for label, branch in (("child: ", step.child or ()), ("parent:", step.parent or ())):
                label_pad = " " * (level + INDENT)
                if not branch:
                    out.append(label_pad + label.rstrip())
                elif len(branch) <= 3 and not any(s.op in FORK_OPS for s in branch):
                    out.append(f"{label_pad}{label} {'; '.join(format_step(s) for s in branch)}")
                else:
                    out.append(label_pad + label.rstrip())
                    _dump_list(branch, level + 2 * INDENT, out)


def _elf_text(spec: ElfSpec) -> str:
    default = ElfSpec()
    parts = [spec.etype, spec.layout]
    if spec.base != default.base:
        parts.append(f"base={spec.base:#x}")
    parts.append(f"bss={spec.bss:#x}")
    if spec.text != default.text:
        parts.append(f"text={spec.text}")
    if spec.stack != default.stack:
        parts.append(f"stack={spec.stack if spec.stack is not None else 'none'}")
    parts.append(f"mutation={spec.mutation}")
    return ", ".join(parts)


def dumps(program: Program) -> str:
    """The program as text (see the module docstring); ends with a newline."""
    out = [HEADER]
    for index, image in enumerate(program.images):
        if index > 0 or image.elf != ElfSpec():
            out.append(f"image {index} ({_elf_text(image.elf)}):")
        _dump_list(image.steps, 0, out)
    return "\n".join(out) + "\n"


# --- Reading -----------------------------------------------------------------------------------

@dataclass
class _Line:
    number: int
    indent: int
    text: str


_STEP_RE = re.compile(r"^(?:r(?P<result>\d+)\s*=\s*)?(?P<op>[a-z_0-9]+)\s*(?:\((?P<args>.*)\))?$")
_REF_RE = re.compile(r"^r(?P<n>\d+)\s*(?:(?P<sign>[+-])\s*(?P<off>\S+))?$")
_IMAGE_RE = re.compile(r"^image\s+(?P<index>\d+)\s*\((?P<spec>[^)]*)\)\s*:$")
_LABEL_RE = re.compile(r"^(?P<label>child|parent)\s*:\s*(?P<rest>.*)$")


def _fail(line: _Line | None, message: str) -> InvalidProgram:
    return InvalidProgram(f"line {line.number}: {message}" if line else message)


def _parse_int(token: str, line: _Line, what: str) -> int:
    try:
        return int(token, 0)
    except ValueError:
        raise _fail(line, f"{what}={token!r} is not a number (write 42, 0x2a or -0x1)") from None


def _parse_flags(kind: str, token: str, line: _Line, what: str) -> int:
    value = 0
    for part in (p.strip() for p in token.split("|")):
        if not part:
            raise _fail(line, f"{what}={token!r} has an empty flag")
        if part[0] in "-0123456789":
            value |= _parse_int(part, line, what)
        elif kind == "prot" and (part == "none" or (set(part) <= set("rwx") and len(set(part)) == len(part))):
            value |= sum(bit for ch, bit in (("r", 1), ("w", 2), ("x", 4)) if ch in part)
        elif kind == "mmap" and part in _MMAP_BITS:
            value |= _MMAP_BITS[part]
        elif kind == "mmap" and part in _MMAP_TYPES.values():
            value |= next(v for v, n in _MMAP_TYPES.items() if n == part)
        elif kind == "wait" and part in _WAIT_BITS:
            value |= _WAIT_BITS[part]
        elif kind == "clone" and part in _CLONE_BITS:
            value |= _CLONE_BITS[part]
        elif kind == "clone" and part in _CLONE_SIGNALS.values():
            value |= next(v for v, n in _CLONE_SIGNALS.items() if n == part)
        else:
            known = {"prot": ["none", "r", "w", "x", "rw", "rx", "rwx"], "mmap": [*_MMAP_TYPES.values(), *_MMAP_BITS],
                     "wait": list(_WAIT_BITS), "clone": [*_CLONE_BITS, *_CLONE_SIGNALS.values()]}[kind]
            raise _fail(line, f"{what}: unknown flag {part!r}; known: {', '.join(known)}")
    return value


def _parse_arg(op: str, index: int, token: str, line: _Line) -> int | Ref:
    names = ARG_NAMES.get(op, ())
    what = f"{op} {names[index]}" if index < len(names) else f"{op} argument {index}"
    if not token:
        raise _fail(line, f"{what} is empty")
    ref = _REF_RE.match(token)
    if ref:
        offset = 0
        if ref["sign"]:
            offset = _parse_int(ref["off"], line, f"{what} offset")
            offset = -offset if ref["sign"] == "-" else offset
        try:
            return Ref(int(ref["n"]), offset)
        except InvalidProgram as err:
            raise _fail(line, str(err)) from None
    kind = _FLAG_ARGS.get((op, index))
    return _parse_flags(kind, token, line, what) if kind else _parse_int(token, line, what)


def _split_top(text: str, sep: str) -> list[str]:
    return [part.strip() for part in text.split(sep)]


class _Parser:
    def __init__(self, text: str, strict: bool) -> None:
        self.strict = strict
        self.lines: list[_Line] = []
        self.header_seen = False
        for number, raw in enumerate(text.splitlines(), start=1):
            if number == 1 and raw.strip().startswith("# forkspec-program"):
                if raw.strip() != HEADER and strict:
                    raise InvalidProgram(f"line 1: header {raw.strip()!r} is not {HEADER!r} "
                                         "(loads(text, strict=False) reads other versions)")
                self.header_seen = True
                continue
            body = raw.split("#", 1)[0].rstrip()
            if not body.strip():
                continue
            stripped = body.lstrip(" ")
            if stripped.startswith("\t"):
                raise InvalidProgram(f"line {number}: indent with spaces, not tabs")
            self.lines.append(_Line(number, len(body) - len(stripped), stripped))
        if strict and not self.header_seen:
            raise InvalidProgram(f"line 1: the text must start with {HEADER!r} "
                                 "(loads(text, strict=False) accepts text without it)")
        self.pos = 0
        self.seen: set[int] = set()

    def peek(self) -> _Line | None:
        return self.lines[self.pos] if self.pos < len(self.lines) else None

    def program(self) -> Program:
        images: list[Image] = []
        while True:
            line = self.peek()
            spec = ElfSpec()
            if line is not None and _IMAGE_RE.match(line.text):
                match = _IMAGE_RE.match(line.text)
                if line.indent:
                    raise _fail(line, "an image header starts at column 0")
                if int(match["index"]) != len(images):
                    raise _fail(line, f"image {match['index']} must be image {len(images)} (images are numbered in order)")
                spec = self.elf_spec(match["spec"], line)
                self.pos += 1
            elif images:
                break
            self.seen = set()
            steps = self.step_list(0, [], None, frozenset())
            images.append(Image(steps, spec))
            if self.peek() is None:
                break
        leftover = self.peek()
        if leftover is not None:
            raise _fail(leftover, f"unexpected {leftover.text!r} (indentation does not match any open list)")
        try:
            return Program(tuple(images))
        except InvalidProgram as err:
            raise InvalidProgram(f"program: {err}") from None

    def elf_spec(self, text: str, line: _Line) -> ElfSpec:
        parts = [p for p in _split_top(text, ",") if p]
        values: dict[str, object] = {}
        positional = ["etype", "layout"]
        names = {f.name for f in fields(ElfSpec)}
        for part in parts:
            if "=" not in part:
                if not positional:
                    raise _fail(line, f"image: {part!r} needs a key (key=value)")
                values[positional.pop(0)] = part
                continue
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in names:
                if self.strict:
                    raise _fail(line, f"image: unknown key {key!r}; known: {', '.join(sorted(names))}")
                continue
            if key in ("base", "bss"):
                values[key] = _parse_int(value, line, f"image {key}")
            elif key in ("mutation", "stack"):
                values[key] = None if value in ("None", "none") else value
            else:
                values[key] = value
        try:
            return ElfSpec(**values)
        except InvalidProgram as err:
            raise _fail(line, str(err)) from None

    def step_list(self, level: int, inline: list[str], inline_line: _Line | None,
                  visible: frozenset[int]) -> tuple[Step, ...]:
        """Steps of one list: the `inline` items first, then lines indented exactly `level`."""
        steps: list[Step] = []
        pending = [(item, inline_line) for item in inline]
        while True:
            if pending:
                item, line = pending.pop(0)
            else:
                line = self.peek()
                if line is None or line.indent != level or _IMAGE_RE.match(line.text) or _LABEL_RE.match(line.text):
                    break
                self.pos += 1
                items = _split_top(line.text, ";")
                item, pending = items[0], [(i, line) for i in items[1:]]
            step_parts = self.step_head(item, line, visible)
            op, args, result = step_parts
            if result is not None:
                visible = visible | {result}
            if op in FORK_OPS:
                if pending:
                    raise _fail(line, f"{op} must end its step list; put the rest under child: or parent:")
                child = self.branch("child", level + INDENT, visible, line)
                parent = self.branch("parent", level + INDENT, visible, line)
                steps.append(self.make(op, args, result, line, child, parent))
                break
            steps.append(self.make(op, args, result, line))
        nxt = self.peek()
        if nxt is not None and nxt.indent > level:
            raise _fail(nxt, f"unexpected indentation ({nxt.indent} spaces, expected {level})")
        return tuple(steps)

    def branch(self, label: str, indent: int, visible: frozenset[int], owner: _Line) -> tuple[Step, ...]:
        line = self.peek()
        match = _LABEL_RE.match(line.text) if line else None
        if not match or match["label"] != label or line.indent != indent:
            where = f"line {line.number}" if line else "end of text"
            raise _fail(owner, f"the fork-like step needs a '{label}:' line indented {indent} spaces "
                               f"below it (found {line.text if line else 'nothing'!r} at {where})")
        self.pos += 1
        rest = match["rest"].strip()
        inline = _split_top(rest, ";") if rest else []
        return self.step_list(indent + INDENT, inline, line, visible)

    def step_head(self, text: str, line: _Line, visible: frozenset[int]) -> tuple[str, tuple, int | None]:
        match = _STEP_RE.match(text)
        if not match:
            raise _fail(line, f"cannot read step {text!r}; write e.g. 'r1 = mmap(0, 0x1000, rw, private|anon)'")
        op = match["op"]
        if op not in OPS:
            raise _fail(line, f"unknown step {op!r}; known: {', '.join(sorted(OPS))}")
        tokens = [] if match["args"] is None or not match["args"].strip() else _split_top(match["args"], ",")
        need = OPS[op]
        defaults = _DEFAULTS.get(op, ())
        if not need - len(defaults) <= len(tokens) <= need:
            raise _fail(line, f"{op} takes {need} arguments, got {len(tokens)}")
        args = [_parse_arg(op, i, tok, line) for i, tok in enumerate(tokens)]
        args += list(defaults[len(args) - (need - len(defaults)):]) if len(args) < need else []
        for arg in args:
            if isinstance(arg, Ref) and arg.result not in visible:
                raise _fail(line, f"{op} refers to r{arg.result}, which this process has not computed yet")
        result = int(match["result"]) if match["result"] is not None else None
        if result is not None:
            if result in self.seen:
                raise _fail(line, f"result r{result} is named twice in this image")
            self.seen.add(result)
        return op, tuple(args), result

    def make(self, op: str, args: tuple, result: int | None, line: _Line,
             child: tuple[Step, ...] | None = None, parent: tuple[Step, ...] | None = None) -> Step:
        try:
            return Step(op, args, result, child, parent)
        except InvalidProgram as err:
            raise _fail(line, str(err)) from None


def loads(text: str, strict: bool = True) -> Program:
    """Read a program written by `dumps` (or by hand); raises InvalidProgram naming the line."""
    return _Parser(text, strict).program()
