"""What README.md and docs/*.md tell a user to type or set exists in the code: config keys,
config examples, metric names, `voxgate` subcommands and their options. A newcomer copies
these literally; a renamed key or flag left in the docs fails here, not at the door."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from voxgate.cli import build_parser
from voxgate.config.mqtt import ActuatorConfig
from voxgate.config.schema import VoxgateConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Dotted names in the docs that start like a config key but are something else: files
# under data_dir, Python attributes and functions.
NOT_KEYS = {"audit.append", "challenge.words", "mqtt.refusal", "stt.templates.inconsistent_takes"}
FILE_SUFFIX = re.compile(r"\.(py|md|db|jsonl|json|yaml|yml|lan|key|anchor)$")


def _lines() -> list[tuple[str, int, str]]:
    out = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            out.append((path.relative_to(REPO).as_posix(), n, line))
    return out


def _logical_lines() -> list[tuple[str, int, str]]:
    """Like _lines, with a command wrapped over several lines joined again: a prose
    paragraph (an indented code block too) is one line, and in a fenced block a line
    ending in a backslash continues."""
    out: list[tuple[str, int, str]] = []
    for path in DOCS:
        where = path.relative_to(REPO).as_posix()
        in_block = False
        start, parts = 0, list[str]()
        for n, line in enumerate([*path.read_text().splitlines(), ""], 1):
            stripped = line.strip()
            fence = stripped.startswith("```")
            if not fence and not parts:
                start = n
            if not fence and stripped:
                parts.append(stripped.rstrip("\\").strip())
            ends = fence or not stripped or (in_block and not stripped.endswith("\\"))
            if ends and parts:
                out.append((where, start, " ".join(parts)))
                parts = []
            if fence:
                in_block = not in_block
    return out


def _config_keys() -> set[str]:
    keys: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            keys.add(prefix + name)
            t = field.annotation
            if isinstance(t, type) and issubclass(t, BaseModel):
                walk(t, prefix + name + ".")
            for arg in getattr(t, "__args__", ()):  # Optional[Section]
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, prefix + name + ".")

    walk(VoxgateConfig, "")
    return keys


def test_every_config_key_the_docs_name_exists() -> None:
    keys = _config_keys()
    sections = {k for k in keys if "." not in k}
    dotted = re.compile(r"(?<![\w./$<-])([a-z_]+(?:\.[a-z_0-9]+)+)(?![\w(/-])")
    wrong = []
    for where, n, line in _lines():
        for m in dotted.finditer(line):
            name = m.group(1)
            if name.split(".")[0] not in sections or name in NOT_KEYS:
                continue
            if FILE_SUFFIX.search(name) or name in keys:
                continue
            wrong.append(f"{where}:{n}: {name}")
    assert not wrong, "config keys the schema does not have:\n" + "\n".join(wrong)


def _yaml_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    fence = re.compile(r"^( *)```ya?ml\n(.*?)^\1```", re.S | re.M)
    for path in DOCS:
        text = path.read_text()
        for m in fence.finditer(text):
            body = "\n".join(ln[len(m.group(1)) :] for ln in m.group(2).splitlines())
            # Placeholders a reader fills in: '<the 64 hex digits ...>', '0378...8428'.
            body = re.sub(
                r"<[^<>\n]*hex[^<>\n]*>|\b[0-9a-f]{2,8}\.\.\.[0-9a-f]{2,8}\b", "a" * 64, body
            )
            line = text[: m.start()].count("\n") + 1
            blocks.append((path.relative_to(REPO).as_posix(), line, body))
    return blocks


def test_config_examples_in_the_docs_are_valid() -> None:
    sections = set(VoxgateConfig.model_fields)
    checked = 0
    for where, line, body in _yaml_blocks():
        try:
            data = yaml.safe_load(body)
        except yaml.YAMLError:
            continue  # a model card template with free-text placeholders
        if not isinstance(data, dict):
            continue
        try:
            if set(data) <= sections:
                VoxgateConfig.model_validate(data)
            elif "devices" in data and "broker" in data:
                ActuatorConfig.model_validate(data)
            else:
                continue
        except ValueError as exc:
            pytest.fail(f"{where}:{line}: the example is not a valid config: {exc}")
        checked += 1
    assert checked >= 4, "the docs' config examples were not found"


def test_every_metric_the_docs_name_is_exported() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from voxgate.service.metrics import Metrics

    m = Metrics()
    m.decisions.labels(outcome="granted").inc()
    m.lock_refusals.labels(reason="expired").inc()
    m.lockouts.labels(scope="user").inc()
    exported = set(re.findall(r"^# TYPE (\w+)", generate_latest(m.registry).decode(), re.M))
    exported |= {f"{name}_total" for name in exported}
    named = set()
    for _, _, line in _lines():
        if "metric" in line.lower() or "voxgate_" in line:
            named |= set(re.findall(r"`(voxgate_[a-z_]+)", line))
    # HA ids and fleet signer keys share the prefix; metrics are the ones with a suffix
    # Prometheus uses or that the table lists.
    metric_like = {n for n in named if not n.startswith(("voxgate_front", "voxgate_fleet"))}
    metric_like.discard("voxgate_")
    assert len(metric_like) >= 8
    missing = sorted(metric_like - exported)
    assert not missing, f"metrics the docs name that the daemon does not export: {missing}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _shown_commands() -> list[tuple[str, int, str]]:
    """`voxgate ...` in code spans and in shell/console code blocks."""
    shown = []
    for path in DOCS:
        where = path.relative_to(REPO).as_posix()
        in_block = in_shell = False
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                in_shell = not in_block and stripped[3:] in ("sh", "console", "")
                in_block = not in_block
                continue
            pieces = re.findall(r"`([^`]*)`", line)
            if in_shell:
                pieces.append(line.split("#", 1)[0] if "voxgate" in line else "")
            for piece in pieces:
                shown += [(where, n, c) for c in _voxgate_commands(piece)]
    # Indented code blocks.
    for where, n, line in _lines():
        if line.startswith("    ") and line.lstrip().startswith("voxgate "):
            shown += [(where, n, c) for c in _voxgate_commands(line.split("#", 1)[0])]
    # Code spans wrapped over two lines of a paragraph.
    for where, n, line in _logical_lines():
        for piece in re.findall(r"`([^`]*)`", line):
            shown += [(where, n, c) for c in _voxgate_commands(piece)]
    return shown


def _voxgate_commands(piece: str) -> list[str]:
    return [
        m.group(1).strip() for m in re.finditer(r"(?:^|[|;]\s*|\s)voxgate ([a-z][^|;#]*)", piece)
    ]


def test_every_command_and_option_the_docs_show_exists() -> None:
    top = _subparsers(build_parser())
    wrong = []
    shown = _shown_commands()
    assert len(shown) >= 40
    for where, n, text in shown:
        words = text.split()
        if words[0] not in top:
            wrong.append(f"{where}:{n}: no command 'voxgate {words[0]}'")
            continue
        parser = top[words[0]]
        subs = _subparsers(parser)
        if subs and len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]):
            if words[1] not in subs:
                wrong.append(f"{where}:{n}: no command 'voxgate {words[0]} {words[1]}'")
                continue
            parser = subs[words[1]]
        options = {s for action in parser._actions for s in action.option_strings}
        for word in words[1:]:
            m = re.match(r"(--?[a-zA-Z][\w-]*)", word)
            if m and m.group(1) not in options:
                wrong.append(f"{where}:{n}: 'voxgate {text}': no option {m.group(1)}")
    assert not wrong, "\n".join(wrong)


REPO_PATH = re.compile(
    r"(?<![\w./-])((?:benchmarks|models|tests|scripts|daemon|systemd|ansible|firmware_config|docs)"
    r"/[\w./-]*[\w/])"
)


def test_every_repository_path_the_docs_name_exists() -> None:
    wrong, checked = [], 0
    for where, n, line in _lines():
        for m in REPO_PATH.finditer(line):
            path = m.group(1).rstrip(".")
            checked += 1
            if not (REPO / path).exists():
                wrong.append(f"{where}:{n}: {path}")
    assert checked >= 30
    assert not wrong, "paths the docs name that are not in the repository:\n" + "\n".join(wrong)


def test_every_benchmark_option_the_docs_show_exists() -> None:
    """`benchmarks/X.py --flag` (and models/ scripts): the script defines the option. Read from
    its source: importing twenty benchmark scripts would be slow."""
    shown = re.compile(r"((?:benchmarks|models)/[\w/]+\.py)((?: +(?:--?[\w-]+|[\w./,=-]+))*)")
    wrong, checked = [], 0
    for where, n, line in _logical_lines():
        for m in shown.finditer(line):
            script = REPO / m.group(1)
            if not script.exists():
                continue  # test_every_repository_path_the_docs_name_exists names it
            source = script.read_text()
            if "set_parser(" in source:  # its --data and --sets come from the shared parser
                source += (REPO / "benchmarks" / "_stats.py").read_text()
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2)):
                checked += 1
                if f'"{flag}"' not in source and f"'{flag}'" not in source:
                    wrong.append(f"{where}:{n}: {m.group(1)} has no {flag}")
    assert checked >= 20
    assert not wrong, "\n".join(wrong)


def _table(doc: str, heading: str) -> list[list[str]]:
    """Rows (cells, stripped) of the first table under `heading` in docs/<doc>."""
    text = (REPO / "docs" / doc).read_text()
    after = text[text.index(heading) :]
    rows, started = [], False
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def test_the_topic_table_is_every_topic_the_door_uses() -> None:
    from voxgate.mqtt.topics import Topics

    t = Topics("<prefix>", "<device>")
    built = {
        t.status, t.state, t.challenge, t.decision, t.decision_refused, t.event, t.user,
        t.lockout, t.command("<name>"), t.command_result("<name>"),
    }  # fmt: skip
    documented = {row[0].strip("`") for row in _table("mqtt.md", "## Topic tree")}
    assert documented == built


def test_the_command_table_is_every_command_the_door_takes() -> None:
    from voxgate.mqtt.topics import COMMANDS

    documented = {row[0].strip("`") for row in _table("mqtt.md", "## Commands")}
    assert documented == set(COMMANDS)


def test_the_state_tables_are_the_loops_states() -> None:
    from voxgate.mqtt.topics import STATES
    from voxgate.service.states import State

    documented = {row[0].strip("`") for row in _table("service.md", "## States")}
    assert documented == {s.value for s in State}
    state_row = next(r for r in _table("mqtt.md", "## Topic tree") if "/state`" in r[0])
    assert set(re.findall(r"`(\w+)`", state_row[3])) == set(STATES)


def test_the_refusal_reasons_the_docs_list_are_the_locks() -> None:
    from voxgate.mqtt.refusal import ADVICE

    text = (REPO / "docs" / "mqtt.md").read_text()
    para = text[text.index("`reason` is the code of the refusal list") :].split("\n\n")[0]
    assert set(re.findall(r"`([a-z-]+)`", para)) - {
        "reason",
        "seq",
        "outcome",
        "null",
        "detail",
    } == set(ADVICE)


def test_every_test_the_docs_cite_exists() -> None:
    """The docs back claims with a test's name ('test_x fails on the old code'): it exists."""
    defined = set()
    for path in (REPO / "tests").rglob("*.py"):
        defined |= set(re.findall(r"^\s*def (test_\w+)", path.read_text(), re.M))
    cited = {
        (where, n, name)
        for where, n, line in _lines() + _logical_lines()
        for name in re.findall(r"\b(test_\w+)\b(?!\.py)", line)
    }
    assert len({name for _, _, name in cited}) >= 6
    missing = sorted(f"{w}:{n}: {name}" for w, n, name in cited if name not in defined)
    assert not missing, "tests the docs cite that do not exist:\n" + "\n".join(missing)


def _default(key: str) -> object:
    value: object = VoxgateConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


SCALE = {"ms": 0.001, "s": 1.0, "days": 86400.0, "dB": 1.0, "": 1.0}
NUMBER = r"(-?\d[\d,]*(?:\.\d+)?(?:/[\d,]+)?) ?(ms|s|days|dB)?\b"


def test_the_defaults_the_docs_give_are_the_schemas() -> None:
    """'`vad.hangover_ms` (500 ms)', '`speaker.enroll_min_takes`, default 3', '(default
    1/1000)': the number is the schema's default (units converted)."""
    keys = _config_keys()
    forms = [
        re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)+)` \((?:default )?" + NUMBER + r"(?=[ ,;)])"),
        re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`,? default:? " + NUMBER),
    ]
    wrong, checked = [], 0
    for where, n, line in _logical_lines():
        for form in forms:
            for m in form.finditer(line):
                key, text, unit = m.group(1), m.group(2), m.group(3) or ""
                default = _default(key) if key in keys else None
                if not isinstance(default, (int, float)) or isinstance(default, bool):
                    continue
                num, _, den = text.replace(",", "").partition("/")
                said = float(num) / (float(den) if den else 1.0)
                own = key.rsplit("_", 1)[-1] if key.endswith(("_ms", "_s")) else ""
                if unit and own:
                    said = said * SCALE[unit] / SCALE[own]
                checked += 1
                if abs(said - float(default)) > 1e-9 * max(1.0, abs(float(default))):
                    wrong.append(f"{where}:{n}: {key} is {default}, the docs say {m.group(0)}")
    assert checked >= 20
    assert not wrong, "\n".join(wrong)


def test_the_stt_settings_table_gives_the_schemas_defaults() -> None:
    rows = _table("challenge.md", "## Settings (`stt:`)")
    assert len(rows) >= 8
    for row in rows:
        keys = re.findall(r"`(\w+)`", row[0])
        said = [s.strip() for s in row[1].replace("\u2212", "-").split("/")]
        if said == ["\u2013"]:  # no default ("–")
            assert all(_default(f"stt.{k}") is None for k in keys), row
            continue
        assert len(said) == len(keys), row
        for key, text in zip(keys, said, strict=True):
            default = _default(f"stt.{key}")
            if isinstance(default, bool):
                assert text == str(default).lower(), (key, text)
            elif isinstance(default, (int, float)):
                assert float(text) == float(default), (key, text)
            else:
                assert text == default, (key, text)
