"""Darknet ``.cfg`` files: sections of ``key=value`` options, read with their line numbers.

Darknet strips every blank from a line and skips lines starting with ``#`` or ``;``; we do the
same so real Darknet files parse unchanged. Each option keeps the line it came from, so an error
names the file, the line and the option, and options no layer reads are reported instead of being
silently ignored (a typo like ``filter=64`` would otherwise train the wrong model).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from plinius.core import fsutil
from plinius.core.errors import ConfigError, NotFoundError

CFG_MAX_BYTES = 1 << 20  # real Darknet cfgs are a few KiB; this bounds what a hostile one costs
_SECTION = re.compile(r"^\[([A-Za-z_]+)\]$")


class CfgError(ConfigError):
    """A Darknet ``.cfg`` problem, located by file, line and option."""

    def __init__(self, path: str, line: int, message: str, option: str | None = None) -> None:
        self.path = path
        self.line = line
        self.option = option
        where = f"{path}:{line}"
        what = f"option '{option}': " if option else ""
        super().__init__(f"{where}: {what}{message}")


@dataclass
class Option:
    key: str
    value: str
    line: int
    used: bool = False


@dataclass
class Section:
    """One ``[name]`` block; typed getters mark options as used and raise located errors."""

    name: str
    line: int
    path: str
    options: dict[str, Option] = field(default_factory=dict)

    def error(self, message: str, key: str | None = None) -> CfgError:
        opt = self.options.get(key) if key else None
        line = opt.line if opt else self.line
        return CfgError(self.path, line, f"[{self.name}]: {message}", key)

    def has(self, key: str) -> bool:
        return key in self.options

    def _raw(self, key: str) -> Option | None:
        opt = self.options.get(key)
        if opt is not None:
            opt.used = True
        return opt

    def get_str(self, key: str, default: str | None = None) -> str:
        opt = self._raw(key)
        if opt is None:
            if default is None:
                raise self.error(f"missing required option '{key}'")
            return default
        return opt.value

    def get_int(self, key: str, default: int | None = None) -> int:
        opt = self._raw(key)
        if opt is None:
            if default is None:
                raise self.error(f"missing required option '{key}'")
            return default
        try:
            return int(opt.value)
        except ValueError:
            # Darknet reads ints with atoi; accept "4.0" but not "4.5" or "abc".
            try:
                as_float = float(opt.value)
            except ValueError:
                as_float = float("nan")
            if as_float.is_integer():
                return int(as_float)
            raise self.error(f"expected an integer, found '{opt.value}'", key) from None

    def get_float(self, key: str, default: float | None = None) -> float:
        opt = self._raw(key)
        if opt is None:
            if default is None:
                raise self.error(f"missing required option '{key}'")
            return default
        try:
            return float(opt.value)
        except ValueError:
            raise self.error(f"expected a number, found '{opt.value}'", key) from None

    def get_list(self, key: str, kind: type[int] | type[float]) -> list[float] | list[int]:
        opt = self._raw(key)
        if opt is None:
            return []
        items = [s for s in opt.value.split(",") if s]
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise self.error(
                f"expected a comma-separated list of {kind.__name__}, found '{opt.value}'", key
            ) from None

    def get_choice(self, key: str, choices: Iterable[str], default: str) -> str:
        value = self.get_str(key, default)
        allowed = list(choices)
        if value not in allowed:
            raise self.error(f"'{value}' is not one of {', '.join(allowed)}", key)
        return value

    def positive(self, key: str, value: int | float) -> None:
        if value <= 0:
            raise self.error(f"must be > 0, found {value}", key)

    def check_all_used(self, ignored: Iterable[str] = ()) -> None:
        """Raise on the first option nobody read (unknown or unsupported for this layer)."""
        skip = set(ignored)
        for opt in self.options.values():
            if not opt.used and opt.key not in skip:
                raise self.error("unknown or unsupported option for this section", opt.key)


@dataclass
class NetConfig:
    """A parsed ``.cfg``: the ``[net]`` section then the layer sections, in file order."""

    path: str
    sections: list[Section]

    @property
    def net(self) -> Section:
        return self.sections[0]

    @property
    def layers(self) -> list[Section]:
        return self.sections[1:]


def parse_cfg_text(text: str, path: str = "<cfg>") -> NetConfig:
    """Parse Darknet ``.cfg`` text; ``path`` is only used in error messages."""
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # Darknet's strip(): drops every blank, not only the ends
        if not line or line[0] in "#;":
            continue
        m = _SECTION.match(line)
        if m:
            sections.append(Section(m.group(1).lower(), lineno, path))
            continue
        if line.startswith("["):
            raise CfgError(path, lineno, f"malformed section header '{raw.strip()}'")
        if "=" not in line:
            raise CfgError(path, lineno, f"expected key=value, found '{raw.strip()}'")
        if not sections:
            raise CfgError(path, lineno, "option before the first [section]")
        key, value = line.split("=", 1)
        if not key or not value:
            raise CfgError(path, lineno, f"empty key or value in '{raw.strip()}'", key or None)
        sec = sections[-1]
        if key in sec.options:
            first = sec.options[key].line
            raise CfgError(path, lineno, f"given twice (first on line {first})", key)
        sec.options[key] = Option(key, value, lineno)
    if not sections:
        raise CfgError(path, 1, "no sections: expected [net] followed by layers")
    if sections[0].name not in ("net", "network"):
        head = sections[0]
        raise CfgError(path, head.line, f"first section is [{head.name}], expected [net]")
    if len(sections) == 1:
        raise CfgError(path, sections[0].line, "[net] has no layers after it")
    for sec in sections[1:]:
        if sec.name in ("net", "network"):
            raise CfgError(path, sec.line, "[net] may only appear once, at the top")
    return NetConfig(path, sections)


def read_cfg_file(path: str | Path) -> str:
    """The text of a ``.cfg`` file: a regular file (a FIFO never blocks), bounded, UTF-8."""
    try:
        raw = fsutil.read_regular(path, "model cfg", max_bytes=CFG_MAX_BYTES)
    except NotFoundError:
        raise ConfigError(f"model cfg {path}: no such file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"model cfg {path} is not UTF-8 text (byte {exc.start}): give a Darknet .cfg file"
        ) from None


def parse_cfg(path: str | Path) -> NetConfig:
    """Read and parse a ``.cfg`` file."""
    return parse_cfg_text(read_cfg_file(path), str(path))
