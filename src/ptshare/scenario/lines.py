"""Where things are written in a scenario file: the line of each ``[[objects]]``/``[[steps]]`` table
and of each key, for ``FILE:LINE`` errors.

``tomllib`` gives values but no positions, so the text is scanned once more, after ``tomllib`` has
accepted it, with TOML's own lexical rules: strings (basic, literal and their multi-line forms,
escapes included), comments, and arrays that span lines are stepped over, so that a ``[[steps]]``
or ``key =`` inside a multi-line string or a multi-line array is never taken for a table or a key.
A table header or a key counts only where TOML allows one: first on a line, outside any value.
Keys written inside an inline table (``{ ... }``) are not located; they fall back to their table's
header line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TableId = tuple[str, int]  # ("steps", 2): the third [[steps]] table
_LISTED = ("objects", "steps")


@dataclass
class Layout:
    """``headers``: the line of each [[objects]]/[[steps]] table; ``keys``: the line of each key in
    them; ``top``: the line of top-level keys (``name``) and of keys of other tables (``machine.cpus``),
    and of those tables' headers (``machine``)."""

    headers: dict[TableId, int] = field(default_factory=dict)
    keys: dict[TableId, dict[str, int]] = field(default_factory=dict)
    top: dict[str, int] = field(default_factory=dict)


class _Scanner:
    """One pass over TOML text that ``tomllib`` accepted; never raises on it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1

    def skip_string(self) -> None:
        """Step over the string that starts at ``i`` (any of TOML's four kinds)."""
        text, quote = self.text, self.text[self.i]
        if text.startswith(quote * 3, self.i):
            end = self.i + 3
            while True:
                if quote == '"' and text[end] == "\\":
                    end += 2
                    continue
                if text.startswith(quote * 3, end):
                    end += 3
                    while end < len(text) and text[end] == quote:  # up to two quotes may end the content
                        end += 1
                    break
                end += 1
        else:
            end = self.i + 1
            while text[end] != quote:
                end += 2 if quote == '"' and text[end] == "\\" else 1
            end += 1
        self.line += text.count("\n", self.i, end)
        self.i = end

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.i)
        self.i = len(self.text) if end < 0 else end

    def name(self, stop: str) -> list[str]:
        """The dotted name from ``i`` up to ``stop`` (``=`` of a key, ``]`` of a header), its parts
        unquoted; ``i`` is left after ``stop``."""
        parts, current = [], []
        while not self.text.startswith(stop, self.i):
            c = self.text[self.i]
            if c in "\"'":
                start = self.i
                self.skip_string()
                current.append(self.text[start + 1:self.i - 1])
                continue
            if c == ".":
                parts.append("".join(current).strip())
                current = []
            elif c not in " \t":
                current.append(c)
            self.i += 1
        parts.append("".join(current).strip())
        self.i += len(stop)
        return parts


def scan(text: str) -> Layout:
    """The layout of ``text``, a scenario that ``tomllib`` parsed."""
    out = Layout()
    counts = dict.fromkeys(_LISTED, 0)
    current: TableId | None = None
    section = ""
    s = _Scanner(text)
    depth = 0  # brackets open in the value being read
    line_start = True
    while s.i < len(text):
        c = text[s.i]
        if c == "\n":
            s.line += 1
            s.i += 1
            line_start = depth == 0
        elif c in " \t\r":
            s.i += 1
        elif c == "#":
            s.skip_comment()
        elif line_start:
            line_start = False
            if text.startswith("[[", s.i):
                s.i += 2
                name = ".".join(s.name("]]"))
                if name in _LISTED:
                    current = (name, counts[name])
                    counts[name] += 1
                    out.headers[current] = s.line
                    out.keys[current] = {}
                else:
                    current = None
                    out.top.setdefault(name, s.line)
                section = name
            elif c == "[":
                s.i += 1
                section = ".".join(s.name("]"))
                current = None
                out.top.setdefault(section, s.line)
            else:
                key = s.name("=")[0]
                if current is not None:
                    out.keys[current].setdefault(key, s.line)
                else:
                    out.top.setdefault(f"{section}.{key}" if section else key, s.line)
        elif c in "\"'":
            s.skip_string()
        else:
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
            s.i += 1
    return out
