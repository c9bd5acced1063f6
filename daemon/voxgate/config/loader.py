"""Read a YAML config file into VoxgateConfig, reporting errors with file, line and key path."""

from __future__ import annotations

import difflib
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from voxgate.config.schema import VoxgateConfig

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails


class ConfigError(Exception):
    """A config file that cannot be used; str() is a message meant for the user."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: invalid config ({len(problems)} problem(s)):\n{lines}")


# Values a config may expand to. A real one has hundreds (a large fleet access map some
# thousands); nested YAML aliases can stand for billions in a few lines, and the line map, the
# schema check and the error messages would each walk all of them.
MAX_VALUES = 100_000
# A config is a few kB (a large fleet access map some hundred). Read no more than this: a
# config path that is a link to /dev/zero, or a log copied over it, was read whole, the
# daemon's memory grew by GBs a second at a SIGHUP and SIGTERM no longer stopped it.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class _TooBig(Exception):
    pass


def _key_lines(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    twice: list[str],
    budget: list[int] | None = None,
) -> None:
    """Record the 1-based line of every key path, so errors can point into the file; a key
    given twice in one mapping goes to `twice` (PyYAML silently keeps the last one). Raises
    _TooBig past MAX_VALUES nodes (aliases counted each time they are used)."""
    budget = [MAX_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    out.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            # Not out[(*path, key)]: valid on 3.10, but mypy reads it as 3.11-only syntax.
            key_path = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in first and key_node.tag != "tag:yaml.org,2002:merge":
                dotted = ".".join(str(p) for p in key_path)
                twice.append(
                    f"line {line}: {dotted}: given twice (first on line {first[key_node.value]});"
                    " the second would replace the first"
                )
            first.setdefault(key_node.value, line)
            out[key_path] = line
            _key_lines(value_node, key_path, out, twice, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_lines(item, (*path, i), out, twice, budget)


# The schema's patterns in words (device_id, topic levels, sha256, fleet names).
_PATTERN_WORDS = {
    r"^[a-z0-9][a-z0-9_-]{0,62}$": "1-63 lowercase letters, digits, '-' or '_', starting "
    "with a letter or digit (no spaces, no capitals)",
    r"^[^#+/]+$": "one MQTT topic level: any text without '/', '#' or '+'",
    r"^[0-9a-f]{64}$": "64 hex digits (a sha256)",
    r"^[A-Za-z0-9_.-]+$": "letters, digits, '_', '.' or '-' (no spaces)",
}


def _describe(err: ErrorDetails, lines: dict[tuple[Any, ...], int]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic puts union member names into loc ("str", "int"); drop them for the key path.
    key_path = tuple(p for p in loc if not (isinstance(p, str) and p in {"str", "int"}))
    dotted = ".".join(str(p) for p in key_path) or "(top level)"
    line = None
    probe = key_path
    while probe and line is None:
        line = lines.get(probe)
        probe = probe[:-1]
    where = f"line {line}: " if line else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = key_path[:-1]
        allowed = _allowed_keys(parent)
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        # A typo names the key it resembles: the list alone (16 keys under speaker) left
        # the reader to find `threshold` for `treshold`.
        close = difflib.get_close_matches(str(key_path[-1]), allowed, n=1, cutoff=0.7)
        if close:
            hint = f" (did you mean '{close[0]}'?; allowed here: {', '.join(allowed)})"
        return f"{where}{dotted}: unknown key{hint}"
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    if kind in ("model_type", "dict_type") and got is None:  # `speaker:`, nothing under it
        return (
            f"{where}{dotted}: the section is empty: put its settings under it, "
            "indented (key: value), or delete the line"
        )
    if kind == "model_type":  # pydantic named its own class ("instance of SpeakerConfig")
        msg = "should be a section of settings, indented under it (key: value)"
    if kind == "string_pattern_mismatch":  # a regular expression is not what to type
        words = _PATTERN_WORDS.get(str((err.get("ctx") or {}).get("pattern")))
        msg = f"should be {words}" if words else msg
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{where}{dotted}: {msg}{shown}"


def _allowed_keys(parent: tuple[Any, ...]) -> list[str]:
    model: Any = VoxgateConfig
    for part in parent:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if hasattr(c, "model_fields")), None)
        if model is None:
            return []
    return sorted(model.model_fields)


_SURROGATE = re.compile("[\ud800-\udfff]")
_TOO_DEEP = "the YAML is nested too deeply, or an alias refers to the value holding it"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scalars that cannot be built (2001-02-30, an int of 5000 digits) are
    YAML errors at their line: PyYAML raises a bare ValueError there, which escaped as a
    traceback (a 500 from the API's config check)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep)
        except ValueError as exc:
            shown = str(node.value) if len(str(node.value)) <= 40 else f"{str(node.value)[:37]}..."
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read '{shown}': {exc}", node.start_mark
            ) from None
        if isinstance(value, str) and _SURROGATE.search(value):
            # YAML's "\ud800" escape passes the schema, then every path or topic built
            # from it raised UnicodeEncodeError at start (a traceback from `voxgate run`).
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a lone UTF-16 surrogate escape (\\ud800-\\udfff) is not a character: write "
                "the character itself or its \\U00XXXXXX escape",
                node.start_mark,
            )
        return value


def read_yaml(text: str) -> Any:
    """YAML text as data, with the door config's scalar checks (for the actuator's config);
    raises yaml.YAMLError for any problem, a nesting too deep included."""
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise yaml.YAMLError(_TOO_DEEP) from None


def parse_config(text: str, source: str = "<config>") -> VoxgateConfig:
    """Validate YAML text; raises ConfigError with every problem found."""
    try:
        return _parse(text, source)
    except RecursionError:  # PyYAML and the line map recurse per level of nesting
        raise ConfigError(source, [_TOO_DEEP]) from None


def _parse(text: str, source: str) -> VoxgateConfig:
    try:
        root = yaml.compose(text)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [yaml_problem(exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["the top level must be a mapping of section: settings"])
    lines: dict[tuple[Any, ...], int] = {}
    twice: list[str] = []
    if root is not None:
        try:
            _key_lines(root, (), lines, twice)
        except _TooBig:
            raise ConfigError(
                source,
                [f"the config expands to more than {MAX_VALUES} values (nested YAML aliases?)"],
            ) from None
    if twice:
        raise ConfigError(source, twice)
    try:
        return VoxgateConfig.model_validate(data)
    except ValidationError as exc:
        # In file order: pydantic reports them in schema order, which jumped about the file.
        found = [_describe(e, lines) for e in exc.errors()]
        raise ConfigError(source, sorted(found, key=_line_of)) from None


# What to do about PyYAML's commonest messages, which say what it found, not what to fix.
_YAML_HINTS = {
    "found character '\\t' that cannot start any token": "indent with spaces, not tabs",
    "mapping values are not allowed here": "a 'key:' where YAML expects none: check this "
    "line's indentation against the lines above it, and quote a value that holds ': '",
}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line, at the line to fix. A key written without its ':' is only
    noticed on the next line (or later), so that message named a line that was right; the
    line where the key began is the one to fix. Other errors that began earlier (an open
    bracket or quote) say where they began."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    begun = getattr(exc, "context_mark", None)
    if mark is None:
        return f"not valid YAML: {problem}"
    line = mark.line + 1
    if begun is not None and begun.line + 1 != line:
        if context == "while scanning a simple key":
            return (
                f"line {begun.line + 1}: not valid YAML: no ':' after the key on this line "
                f"(write 'key: value'; the parser gave up on line {line})"
            )
        return f"line {line}: not valid YAML: {problem} ({context} on line {begun.line + 1})"
    hint = _YAML_HINTS.get(problem)
    return f"line {line}: not valid YAML: {problem}" + (f" ({hint})" if hint else "")


def _line_of(problem: str) -> tuple[bool, int]:
    """Sort key: a problem's file line; those without one (a whole-file rule) go last."""
    m = re.match(r"line (\d+): ", problem)
    return (m is None, int(m.group(1)) if m else 0)


def load_config(path: str | os.PathLike[str] | None) -> VoxgateConfig:
    """Load a config file; None gives the embedded defaults."""
    if path is None:
        return VoxgateConfig()
    p = Path(path)
    try:
        text = read_config_text(p)
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"cannot read: {exc}"]) from None
    if not text.strip():
        # YAML reads nothing as "all defaults", but a config file with nothing in it was
        # cut off or zeroed (a full disk during an edit, an SD card fault): running on the
        # defaults would quietly change the door (its data folder, MQTT, lockout).
        raise ConfigError(
            str(p),
            [
                f"the file is empty ({len(text.encode())} bytes): cut off or damaged? restore it; "
                "a config meant to use every default is the line '{}'"
            ],
        )
    return parse_config(text, str(p))


def read_config_text(p: Path) -> str:
    """The file's text; ConfigError for a folder, a device or a socket, or more than a
    config's size. A pipe is read (`-c <(...)`, a config piped to /dev/stdin): opened without
    blocking, so a named FIFO no one writes to reads as empty instead of waiting for ever."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            os.set_blocking(fd, True)  # a writer that is there may not have written yet
    except OSError:
        os.close(fd)
        raise
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device?)"
        raise ConfigError(str(p), [f"cannot read: {what}; give the YAML config file"])
    with open(fd, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            str(p),
            [
                f"larger than {MAX_CONFIG_BYTES // 2**20} MB: not a voxgate config (a log copied "
                "over it?); restore the YAML config"
            ],
        )
    return data.decode("utf-8")
