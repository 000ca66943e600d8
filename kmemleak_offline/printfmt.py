"""Render an event's INFO text from its tracefs `print fmt`, byte-compatible with libtraceevent.

perf-prof prints leaked allocations with libtraceevent (`event-parse.c`), so matching its output
means copying its quirks, not C's or the kernel's:

* plain `%p` goes to glibc's `%p`: `0x<hex>`, or `(nil)` for 0; width/flags are ignored.
* `%pS`/`%pF` print `sym+0xoff`, `%ps`/`%pf` print `sym`; unresolved addresses print `0x<hex>`.
* fields are read as unsigned numbers of their size (no sign extension); arithmetic is unsigned
  64-bit; the printf length modifier decides the C type (`%d` -> int, `%ld` -> long, ...).
* casts only narrow (`(int)`, `(u8)`, `(unsigned short)`...); pointer and struct casts are no-ops,
  so pointer arithmetic is unscaled.
* an identifier that is not `REC->field` (e.g. `vmemmap_base`) evaluates to 0: libtraceevent looks
  it up in its function table, which perf fills with nothing, so `page=%p` of mm_page_alloc
  prints the pfn (as `perf script` does).
* `__print_flags`: entries are tried in order; an entry matches when all its bits are set, and
  its bits are removed; leftover bits print as `0x%llx`; a 0-valued entry never matches (so a 0
  value prints nothing). `__print_symbolic`: exact match, else `0x%llx`.
* `%s` of a long-sized non-array field prints its value as bare hex.

The print fmt is parsed once into a small AST; rendering walks it per printed row. A print fmt
that cannot be parsed (or an unknown helper) renders like libtraceevent's failure path:
`[FAILED TO PARSE] field=value ...` over the non-common fields. Rendering never raises.

Limits (best effort, documented): `REC->arr[i]` only knows element 0 of non-char arrays
(tracefs.decode keeps element 0), `%pM`/`%pI`/`%pU` print the value as `0x<hex>`, and
`__get_bitmask`/`__get_cpumask` are unsupported (failure path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .format import tracefs

Ksym = Callable[[int], "tuple[str, int] | None"]

_M64 = (1 << 64) - 1


class PrintFmtError(ValueError):
    """A print fmt this renderer cannot parse (rendering then uses the field=value fallback)."""


# ---------------------------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<chr>'(?:[^'\\]|\\.)+')
  | (?P<item>[A-Za-z0-9_]+)
  | (?P<op>->|<<|>>|<=|>=|==|!=|&&|\|\||\+\+|--|[-+*/%<>=!~&|^?:.])
  | (?P<delim>[(),\[\]{}])
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0"}


def _unescape(body: str) -> str:
    """C string literal body -> text (unknown escapes keep the character, as libtraceevent)."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.DOTALL)


@dataclass(frozen=True)
class _Tok:
    kind: str  # str, chr, item, op, delim, end
    text: str


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise PrintFmtError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        tok = m.group()
        if kind == "str":
            tok = _unescape(tok[1:-1])
        elif kind == "chr":
            tok = _unescape(tok[1:-1])[:1]
        toks.append(_Tok(kind, tok))
    toks.append(_Tok("end", ""))
    return toks


def _strtoull(text: str) -> int:
    """C strtoull(text, NULL, 0): leading integer prefix, 0 if none; suffixes like UL ignored."""
    m = re.match(r"\s*([-+]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return 0
    digits = m.group(2)
    base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") and len(digits) > 1 else 10
    v = int(digits, base)
    return (-v if m.group(1) == "-" else v) & _M64


# ---------------------------------------------------------------------------------------------
# AST
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int
    text: str


@dataclass(frozen=True)
class Str:
    text: str


@dataclass(frozen=True)
class Atom:
    """An identifier that is not a field (e.g. `vmemmap_base`): numeric value 0."""

    name: str


@dataclass(frozen=True)
class FieldRef:
    name: str


@dataclass(frozen=True)
class Index:
    name: str
    index: object


@dataclass(frozen=True)
class Cast:
    ctype: str
    expr: object


@dataclass(frozen=True)
class Unary:
    op: str
    expr: object


@dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object


@dataclass(frozen=True)
class Cond:
    cond: object
    then: object
    other: object


@dataclass(frozen=True)
class Flags:
    expr: object
    delim: str
    entries: tuple[tuple[int, str], ...]  # (signed 64-bit value, name)
    symbolic: bool


@dataclass(frozen=True)
class GetStr:
    name: str


@dataclass(frozen=True)
class DynArray:
    name: str


@dataclass(frozen=True)
class DynArrayLen:
    name: str


@dataclass(frozen=True)
class Hex:
    src: object  # FieldRef or DynArray
    length: object
    spaced: bool  # __print_hex puts spaces between bytes, __print_hex_str does not


@dataclass(frozen=True)
class IntArray:
    src: object
    count: object
    el_size: object


_BINARY_PRIO = {
    "*": 13, "/": 13, "%": 13, "+": 12, "-": 12, "<<": 11, ">>": 11,
    "<": 10, "<=": 10, ">": 10, ">=": 10, "==": 9, "!=": 9,
    "&": 8, "^": 7, "|": 6, "&&": 5, "||": 4,
}
_TYPE_WORDS = {
    "unsigned", "signed", "int", "long", "short", "char", "void", "struct", "const", "volatile",
    "bool", "_Bool", "enum", "union", "__seg_gs", "__user", "__percpu", "__rcu",
}
_TYPE_RE = re.compile(r"^(?:[us](?:8|16|32|64)|__[us](?:8|16|32|64)|[a-z0-9_]+_t)$")
_SIZEOF = {"char": 1, "short": 2, "int": 4, "long": 8, "long long": 8, "u8": 1, "s8": 1,
           "u16": 2, "s16": 2, "u32": 4, "s32": 4, "u64": 8, "s64": 8, "bool": 1}


class _Parser:
    """Recursive-descent parser for the C subset of kernel print fmt arguments."""

    def __init__(self, toks: list[_Tok], fields: Mapping[str, tracefs.Field]):
        self.toks = toks
        self.i = 0
        self.fields = fields

    # -- token helpers
    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.peek()
        self.i += 1
        return t

    def expect(self, text: str) -> None:
        t = self.next()
        if t.text != text or t.kind in ("str", "chr"):
            raise PrintFmtError(f"expected {text!r}, got {t.text!r}")

    def at(self, text: str) -> bool:
        t = self.peek()
        return t.text == text and t.kind in ("op", "delim")

    # -- grammar
    def expr(self) -> object:
        return self.ternary()

    def ternary(self) -> object:
        cond = self.binary(4)
        if self.at("?"):
            self.next()
            then = self.expr()
            self.expect(":")
            other = self.ternary()
            return Cond(cond, then, other)
        return cond

    def binary(self, min_prio: int) -> object:
        left = self.unary()
        while True:
            t = self.peek()
            prio = _BINARY_PRIO.get(t.text) if t.kind == "op" else None
            if prio is None or prio < min_prio:
                return left
            self.next()
            right = self.binary(prio + 1)
            left = Binary(t.text, left, right)

    def unary(self) -> object:
        t = self.peek()
        if t.kind == "op" and t.text in ("-", "+", "!", "~"):
            self.next()
            return Unary(t.text, self.unary())
        if t.kind == "op" and t.text in ("*", "&"):
            self.next()  # dereference / address-of: keep the operand's value (best effort)
            return self.unary()
        return self.postfix()

    def postfix(self) -> object:
        node = self.primary()
        while self.at("["):
            self.next()
            idx = self.expr()
            self.expect("]")
            if not isinstance(node, FieldRef):
                raise PrintFmtError("indexing is only supported on REC->field")
            node = Index(node.name, idx)
        return node

    def _cast_type(self) -> str | None:
        """If the tokens after '(' are a type followed by ')', return it (parser left after ')')."""
        j = self.i
        words: list[str] = []
        while True:
            t = self.toks[j]
            if t.kind == "item" and not t.text[0].isdigit():
                words.append(t.text)
            elif t.kind == "op" and t.text == "*":
                words.append("*")
            else:
                break
            j += 1
        if not words or self.toks[j].text != ")" or self.toks[j].kind != "delim":
            return None
        after = self.toks[j + 1]
        typeish = "*" in words or any(w in _TYPE_WORDS or _TYPE_RE.match(w) for w in words)
        starts_operand = after.kind in ("item", "str", "chr") or (
            after.kind == "delim" and after.text == "(")
        if not (starts_operand and (typeish or len(words) == 1)):
            return None
        self.i = j + 1
        return " ".join(words).replace(" *", "*").replace("*", " *")

    def primary(self) -> object:
        t = self.next()
        if t.kind == "str":
            text = t.text
            while self.peek().kind == "str":  # adjacent literals concatenate
                text += self.next().text
            return Str(text)
        if t.kind == "chr":
            return Num(ord(t.text) if t.text else 0, t.text)
        if t.kind == "delim" and t.text == "(":
            ctype = self._cast_type()
            if ctype is not None:
                return Cast(ctype, self.unary())
            inner = self.expr()
            self.expect(")")
            return inner
        if t.kind == "item":
            if t.text[0].isdigit():
                return Num(_strtoull(t.text), t.text)
            if t.text == "REC":
                self.expect("->")
                name = self.next()
                if name.kind != "item":
                    raise PrintFmtError("expected a field name after REC->")
                return FieldRef(name.text)
            if self.at("("):
                self.next()
                return self.function(t.text)
            return Atom(t.text)
        raise PrintFmtError(f"unexpected token {t.text!r}")

    def _field_name(self, node: object) -> str:
        if isinstance(node, FieldRef):
            return node.name
        if isinstance(node, Atom):
            return node.name
        raise PrintFmtError("expected a field name")

    def _const(self, node: object) -> int:
        """Evaluate a flag/symbol value at parse time (signed 64-bit, as libtraceevent's arg_eval)."""
        v = _eval(node, None) & _M64
        return v - (1 << 64) if v >> 63 else v

    def _entries(self) -> tuple[tuple[int, str], ...]:
        out: list[tuple[int, str]] = []
        while self.at(","):
            self.next()
            if self.at(")"):
                break
            self.expect("{")
            val = self._const(self.expr())
            self.expect(",")
            name = self.expr()
            self.expect("}")
            if isinstance(name, Str):
                out.append((val, name.text))
            elif val != 0:
                out.append((val, str(_eval(name, None))))
        return tuple(out)

    def function(self, name: str) -> object:
        if name in ("__print_flags", "__print_flags_u64", "__print_symbolic", "__print_symbolic_u64"):
            val = self.expr()
            symbolic = "symbolic" in name
            delim = ""
            if not symbolic:
                self.expect(",")
                d = self.expr()
                delim = d.text if isinstance(d, Str) else ""
            entries = self._entries()
            self.expect(")")
            return Flags(val, delim, entries, symbolic)
        if name in ("__get_str", "__get_rel_str"):
            node = GetStr(self._field_name(self.expr()))
        elif name in ("__get_dynamic_array", "__get_rel_dynamic_array"):
            node = DynArray(self._field_name(self.expr()))
        elif name in ("__get_dynamic_array_len", "__get_rel_dynamic_array_len"):
            node = DynArrayLen(self._field_name(self.expr()))
        elif name in ("__print_hex", "__print_hex_str"):
            src = self.expr()
            self.expect(",")
            node = Hex(src, self.expr(), name == "__print_hex")
        elif name == "__print_array":
            src = self.expr()
            self.expect(",")
            count = self.expr()
            self.expect(",")
            node = IntArray(src, count, self.expr())
        elif name == "__builtin_expect":
            node = self.expr()
            self.expect(",")
            self.expr()
        elif name == "sizeof":
            words = []
            while not self.at(")") and self.peek().kind != "end":
                words.append(self.next().text)
            ctype = " ".join(w for w in words if w not in ("unsigned", "signed", "const"))
            node = Num(8 if "*" in words else _SIZEOF.get(ctype, 8), "sizeof")
        else:
            raise PrintFmtError(f"function {name} not supported")
        self.expect(")")
        return node

    def args(self) -> list[object]:
        out: list[object] = []
        while self.at(","):
            self.next()
            out.append(self.expr())
        if self.peek().kind != "end":
            raise PrintFmtError(f"unexpected {self.peek().text!r} after arguments")
        return out


# ---------------------------------------------------------------------------------------------
# Format string
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """One % conversion: kind 'num' | 'ptr' | 'str' | 'bad'."""

    kind: str
    spec: str  # the original text, e.g. "%08lx", "%pS"
    flags: str
    width: str  # digits, '*' or ''
    prec: str  # '.digits' or ''
    ls: int
    conv: str  # d i u x X o c / pointer extension ('' for plain %p) / s
    arg: object = None
    len_arg: object = None


def _parse_format(fmt: str, args: list[object]) -> list[str | Conv]:
    """Split the format string into literals and conversions bound to their arguments."""
    items: list[str | Conv] = []
    it = iter(args)
    lit: list[str] = []
    i = 0
    n = len(fmt)

    def take() -> object:
        try:
            return next(it)
        except StopIteration:
            raise PrintFmtError("not enough arguments for the format") from None

    while i < n:
        c = fmt[i]
        if c != "%":
            lit.append(c)
            i += 1
            continue
        if fmt[i + 1:i + 2] == "%":
            lit.append("%")
            i += 2
            continue
        if lit:
            items.append("".join(lit))
            lit = []
        j = i + 1
        ls = 0
        flags = width = prec = ""
        len_arg = None
        in_prec = False
        while j < n:
            ch = fmt[j]
            if ch in "#-+0" and not width and not in_prec:
                flags += ch
            elif ch.isdigit():
                if in_prec:
                    prec += ch
                else:
                    width += ch
            elif ch == ".":
                in_prec = True
                prec = "."
            elif ch == "*":
                len_arg = take()
                width = "*"
            elif ch == "h":
                ls -= 1
            elif ch == "l":
                ls += 1
            elif ch == "L":
                ls = 2
            elif ch in "zZ":
                ls = 1
            else:
                break
            j += 1
        if j >= n:
            lit.append(fmt[i:])
            break
        ch = fmt[j]
        if ch == "p":
            ext = ""
            if j + 1 < n and fmt[j + 1] in "FSfsMmIiUh":
                ext = fmt[j + 1]
                j += 1
                if ext in "Mm" and fmt[j + 1:j + 2] in ("R", "F"):
                    j += 1
            items.append(Conv("ptr", fmt[i:j + 1], flags, width, prec, ls, ext, take(), len_arg))
        elif ch in "cdiuxXo":
            items.append(Conv("num", fmt[i:j + 1], flags, width, prec, ls, ch, take(), len_arg))
        elif ch == "s":
            items.append(Conv("str", fmt[i:j + 1], flags, width, prec, ls, ch, take(), len_arg))
        else:
            items.append(f">{ch}<")  # libtraceevent prints unknown conversions this way
        i = j + 1
    if lit:
        items.append("".join(lit))
    return items


# ---------------------------------------------------------------------------------------------
# Evaluation (one row)
# ---------------------------------------------------------------------------------------------


class _Row:
    """Field access for one sample: numbers read unsigned at their declared size."""

    def __init__(self, cols: Mapping[str, np.ndarray], row: int, fields: Mapping[str, tracefs.Field]):
        self.cols = cols
        self.row = row
        self.fields = fields

    def number(self, name: str) -> int:
        col = self.cols.get(name)
        fld = self.fields.get(name)
        if col is None or fld is None:
            return 0
        v = col[self.row]
        if isinstance(v, bytes | np.bytes_):
            return 0
        size = fld.elem_size if fld.array_len else fld.size
        return int(v) & ((1 << (8 * min(size, 8))) - 1)

    def raw(self, name: str) -> bytes:
        """Bytes of a string / array field (data_loc padded to its recorded length)."""
        col = self.cols.get(name)
        fld = self.fields.get(name)
        if col is None or fld is None:
            return b""
        v = col[self.row]
        if not isinstance(v, bytes | np.bytes_):
            return int(v).to_bytes(max(fld.elem_size, 1), "little", signed=int(v) < 0)
        b = bytes(v)
        if fld.data_loc:
            ln = self.cols.get(f"{name}_len")
            want = int(ln[self.row]) if ln is not None else len(b)
        else:
            want = fld.size
        return b.ljust(want, b"\0")[: max(want, len(b))]

    def cstring(self, name: str) -> bytes:
        return self.raw(name).split(b"\0", 1)[0]


def _narrow(val: int, ctype: str) -> int:
    """libtraceevent eval_type: casts to 8/16/32-bit integer types mask; everything else passes."""
    t = ctype.strip()
    if t.endswith("*") or t.startswith("struct"):
        return val
    t = re.sub(r"^(const|volatile)\s+", "", t)
    if t in ("u8", "s8", "__u8", "__s8"):
        return val & 0xFF
    if t in ("u16", "s16", "__u16", "__s16"):
        return val & 0xFFFF
    if t in ("u32", "s32", "__u32", "__s32"):
        return val & 0xFFFFFFFF
    t = t.removeprefix("unsigned ")
    return {"char": val & 0xFF, "short": val & 0xFFFF, "int": val & 0xFFFFFFFF}.get(t, val)


def _eval(node: object, row: _Row | None) -> int:
    """Numeric value (unsigned 64-bit) of a node; `row` None means parse-time constant."""
    match node:
        case Num(value=v):
            return v & _M64
        case Str(text=t):
            return _strtoull(t)
        case Atom():
            return 0
        case FieldRef(name=n):
            if row is None:
                raise PrintFmtError(f"field {n} in a constant expression")
            return row.number(n)
        case Index(name=n, index=idx):
            if row is None:
                raise PrintFmtError(f"field {n} in a constant expression")
            return row.number(n) if _eval(idx, row) == 0 else 0
        case Cast(ctype=t, expr=e):
            return _narrow(_eval(e, row), t)
        case Unary(op=op, expr=e):
            v = _eval(e, row)
            return {"-": -v, "+": v, "!": int(not v), "~": ~v}[op] & _M64
        case Cond(cond=c, then=a, other=b):
            return _eval(a if _eval(c, row) else b, row)
        case Binary(op=op, left=lhs, right=rhs):
            if op == "&&":
                return int(bool(_eval(lhs, row)) and bool(_eval(rhs, row)))
            if op == "||":
                return int(bool(_eval(lhs, row)) or bool(_eval(rhs, row)))
            a, b = _eval(lhs, row), _eval(rhs, row)
            return _binop(op, a, b)
        case DynArrayLen(name=n):
            return len(row.raw(n)) if row is not None else 0
        case _:
            return 0  # strings, flags, dynamic arrays: 0 as a number (libtraceevent)


def _binop(op: str, a: int, b: int) -> int:
    if op in ("/", "%") and b == 0:
        return 0
    if op in ("<<", ">>") and b >= 64:
        return 0
    r = {
        "*": lambda: a * b, "/": lambda: a // b, "%": lambda: a % b, "+": lambda: a + b,
        "-": lambda: a - b, "<<": lambda: a << b, ">>": lambda: a >> b,
        "<": lambda: int(a < b), "<=": lambda: int(a <= b), ">": lambda: int(a > b),
        ">=": lambda: int(a >= b), "==": lambda: int(a == b), "!=": lambda: int(a != b),
        "&": lambda: a & b, "^": lambda: a ^ b, "|": lambda: a | b,
    }[op]()
    return r & _M64


def _src_bytes(src: object, row: _Row) -> bytes:
    if isinstance(src, DynArray | FieldRef | GetStr):
        return row.raw(src.name)
    return b""


def _string(node: object, row: _Row, conv: Conv | None = None) -> str:
    """libtraceevent print_str_arg: the text a node contributes to a %s (or flags/hex helper)."""
    match node:
        case Str(text=t):
            return t
        case Num(text=t):
            return t
        case Atom(name=n):
            return n
        case Cond(cond=c, then=a, other=b):
            return _string(a if _eval(c, row) else b, row, conv)
        case GetStr(name=n):
            return row.cstring(n).decode("utf-8", "replace")
        case FieldRef(name=n):
            fld = row.fields.get(n)
            if fld is None:
                return ""
            if fld.array_len is None and not fld.data_loc and fld.size == 8:
                return f"{row.number(n):x}"
            return row.cstring(n).decode("utf-8", "replace")
        case Flags(expr=e, delim=d, entries=ents, symbolic=sym):
            return _flags(_eval(e, row), d, ents, sym)
        case Hex(src=s, length=ln, spaced=sp):
            data = _src_bytes(s, row)
            n = _eval(ln, row)
            data = data.ljust(n, b"\0")[:n]
            return (" " if sp else "").join(f"{b:02x}" for b in data)
        case IntArray(src=s, count=c, el_size=es):
            data = _src_bytes(s, row)
            n, size = _eval(c, row), _eval(es, row)
            if size not in (1, 2, 4, 8):
                return "{}"
            data = data.ljust(n * size, b"\0")
            vals = [int.from_bytes(data[k * size:(k + 1) * size], "little") for k in range(n)]
            return "{" + ",".join(f"0x{v:x}" for v in vals) + "}"
        case _:
            return ""


def _flags(val: int, delim: str, entries: tuple[tuple[int, str], ...], symbolic: bool) -> str:
    sval = val - (1 << 64) if val >> 63 else val
    if symbolic:
        for fval, name in entries:
            if sval == fval:
                return name
        return f"0x{val:x}"
    parts: list[str] = []
    for fval, name in entries:
        if not val and fval < 0:
            parts.append(name)
            break
        if fval > 0 and (val & fval) == fval:
            parts.append(name)
            val &= ~fval
    if val:
        parts.append(f"0x{val:x}")
    return delim.join(parts)


_LS_BITS = {-2: 8, -1: 16, 0: 32, 1: 64, 2: 64}


def _cformat(conv: Conv, value: int | str, width: int | None) -> str:
    """printf one value with the conversion's flags/width/precision, C semantics."""
    w = str(width) if width is not None else conv.width
    if isinstance(value, str):
        return f"%{conv.flags.replace('0', '')}{w}{conv.prec}s" % value
    c = conv.conv
    flags = conv.flags
    if c == "c":
        return f"%{flags.replace('0', '')}{w}s" % chr(value & 0xFF)
    if "#" in flags and value == 0:
        flags = flags.replace("#", "")
    py = {"i": "d", "u": "d"}.get(c, c)
    out = f"%{flags}{w}{conv.prec}{py}" % value
    if c == "o" and "#" in flags:
        out = out.replace("0o", "0", 1)
    return out


class PrintFormatter:
    """Renders one event type's INFO text (libtraceevent-compatible) for chosen rows."""

    def __init__(self, fmt: tracefs.EventFormat, ksym: Ksym | None = None):
        self.fmt = fmt
        self.ksym = ksym
        self._fields = fmt.field_map()
        self.error: str | None = None
        self._items: list[str | Conv] | None = None
        try:
            self._items = self._compile(fmt.print_fmt)
        except (PrintFmtError, RecursionError, KeyError, ValueError, IndexError) as exc:
            self.error = str(exc) or type(exc).__name__

    def _compile(self, text: str) -> list[str | Conv]:
        toks = _lex(text)
        if not toks or toks[0].kind != "str":
            raise PrintFmtError("print fmt does not start with a string")
        parser = _Parser(toks, self._fields)
        fmt_str = parser.next().text
        while parser.peek().kind == "str":
            fmt_str += parser.next().text
        args = parser.args()
        for node in args:
            self._check_fields(node)
        return _parse_format(fmt_str, args)

    def _check_fields(self, node: object) -> None:
        """Unknown REC->fields fail the parse, as libtraceevent marks the event failed."""
        name = getattr(node, "name", None)
        if isinstance(node, FieldRef | Index | GetStr | DynArray | DynArrayLen) and name not in self._fields:
            raise PrintFmtError(f"field {name} not found")
        for attr in ("expr", "left", "right", "cond", "then", "other", "index", "src", "length",
                     "count", "el_size"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, int | str):
                self._check_fields(child)

    @property
    def ok(self) -> bool:
        """True when the print fmt parsed (otherwise rows render with the field=value fallback)."""
        return self._items is not None

    def render(self, cols: Mapping[str, np.ndarray], rows: Sequence[int] | np.ndarray) -> list[str]:
        """INFO text of the given rows of `cols` (tracefs.decode output for this event)."""
        out: list[str] = []
        for r in np.asarray(rows, dtype=np.int64).ravel().tolist():
            row = _Row(cols, r, self._fields)
            try:
                out.append(self._render_row(row) if self._items is not None else self._fallback(row))
            except (RecursionError, ValueError, TypeError, OverflowError, IndexError, KeyError):
                out.append(self._fallback(row))
        return out

    def _render_row(self, row: _Row) -> str:
        parts: list[str] = []
        for item in self._items or ():
            if isinstance(item, str):
                parts.append(item)
                continue
            width = None
            if item.len_arg is not None:
                w = _eval(item.len_arg, row) & 0xFFFFFFFF
                width = w - (1 << 32) if w >> 31 else w
            if item.kind == "num":
                bits = _LS_BITS.get(item.ls, 64)
                v = _eval(item.arg, row) & ((1 << bits) - 1)
                if item.conv in "di" and v >> (bits - 1):
                    v -= 1 << bits
                parts.append(_cformat(item, v, width))
            elif item.kind == "str":
                parts.append(_cformat(item, _string(item.arg, row, item), width))
            else:
                parts.append(self._pointer(item, row))
        return "".join(parts)

    def _pointer(self, conv: Conv, row: _Row) -> str:
        if isinstance(conv.arg, Str):
            return conv.arg.text
        val = _eval(conv.arg, row)
        if conv.conv in ("S", "s", "F", "f"):
            hit = self.ksym(val) if self.ksym is not None else None
            if hit:
                sym, off = hit
                return f"{sym}+0x{off:x}" if conv.conv in ("S", "F") else sym
            return f"0x{val:x}"
        if conv.conv == "h":
            data = _src_bytes(conv.arg, row)
            return data[:1].hex() if data else ""
        return f"0x{val:x}" if val else "(nil)"

    def _fallback(self, row: _Row) -> str:
        """libtraceevent's failure rendering: `[FAILED TO PARSE]` then ` name=value` per field."""
        parts = ["[FAILED TO PARSE]"]
        for fld in self.fmt.fields:
            if fld.common:
                continue
            parts.append(f" {fld.name}={_raw_field(fld, row)}")
        return "".join(parts)


def _raw_field(fld: tracefs.Field, row: _Row) -> str:
    """libtraceevent print_field_raw."""
    if fld.array_len is not None or fld.data_loc:
        data = row.raw(fld.name)
        text = data.split(b"\0", 1)[0]
        if fld.is_string and all(32 <= b < 127 or b in b"\t\n\v\f\r" for b in text):
            return text.decode("ascii")
        return "ARRAY[" + ", ".join(f"{b:02x}" for b in data) + "]"
    val = row.number(fld.name)
    if fld.is_pointer:
        return f"0x{val:x}"
    is_long = "long" in fld.type
    if fld.signed:
        bits = 8 * fld.size
        sv = val - (1 << bits) if bits <= 64 and val >> (bits - 1) else val
        if fld.size == 4:
            return f"0x{val & 0xFFFFFFFF:x}" if is_long else str(sv)
        if fld.size == 2:
            return f"{sv:2d}"
        if fld.size == 1:
            return f"{sv:1d}"
        return str(sv)
    return f"0x{val:x}" if is_long else str(val)


# ---------------------------------------------------------------------------------------------
# Latency flags
# ---------------------------------------------------------------------------------------------

_IRQS_OFF, _NEED_RESCHED_LAZY, _NEED_RESCHED, _HARDIRQ, _SOFTIRQ = 0x01, 0x02, 0x04, 0x08, 0x10


def lat_flags(fmt: tracefs.EventFormat, common_flags: int, preempt_count: int,
              extra: Mapping[str, int] | None = None) -> str:
    """perf-prof's LAT column (docs/behaviour.md, the event line): irq, resched, irq context, preempt nibbles.

    Migrate-disable and lock-depth digits appear only when the format has those common fields;
    their values come from `extra` (by field name, with or without `common_`), '.' if absent/<0.
    """
    extra = extra or {}
    f = int(common_flags)
    pc = int(preempt_count) & 0xFF
    hard, soft = f & _HARDIRQ, f & _SOFTIRQ
    out = [
        "d" if f & _IRQS_OFF else ".",
        "N" if f & _NEED_RESCHED else "L" if f & _NEED_RESCHED_LAZY else ".",
        "H" if hard and soft else "h" if hard else "s" if soft else ".",
        f"{pc & 0xF:x}" if pc & 0xF else ".",
        f"{pc >> 4:x}" if pc & 0xF0 else ".",
    ]
    for name in ("common_migrate_disable", "common_lock_depth"):
        if fmt.has_field(name):
            v = extra.get(name, extra.get(name.removeprefix("common_")))
            out.append("." if v is None or int(v) < 0 else str(int(v)))
    return "".join(out)
