"""Layered, schema-checked configuration for every station daemon.

A station is tuned in the field, often at night, by an engineer who edits a YAML file and
restarts a unit. A typo that passes silently costs an enrollment day, so every file is
checked on its own against its section's JSON Schema and every finding names the file, the
line, the key and what would have been allowed. All findings are collected and raised once,
so one ``stationctl config check`` shows everything to fix.

Layers, later wins (mappings merge key by key; lists and scalars are replaced):

1. packaged ``config/<section>.yaml`` (the ``station.defaults`` package; holds every key)
2. ``<etc>/<section>.yaml``
3. ``<etc>/<section>@<instance>.yaml`` (instanced daemons, e.g. ``camera@cam0``)
4. ``<etc>/conf.d/[NN-]<section>[@<instance>][.<note>].yaml`` in sorted name order
5. ``key.sub=value`` overrides from the command line (values parsed as YAML)

The schema of a section is ``config/<section>.schema.yaml`` (JSON Schema 2020-12 in YAML).
"""
from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from station.errors import ConfigError
from station.paths import Paths

INSTANCE_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
_INSTANCE = re.compile(INSTANCE_PATTERN)
_ETC_NAME = re.compile(rf"(?P<section>[a-z][a-z0-9_]*)(?:@(?P<instance>{INSTANCE_PATTERN}))?\.yaml")
_CONFD_NAME = re.compile(
    rf"(?:\d+-)?(?P<section>[a-z][a-z0-9_]*)(?:@(?P<instance>{INSTANCE_PATTERN}))?(?:\.[^/]+)?\.yaml"
)
ETC_PATTERN = "<section>[@<instance>].yaml"
CONFD_PATTERN = "[NN-]<section>[@<instance>][.<note>].yaml"
COMMAND_LINE = "<command line>"

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
# Schema keywords whose value maps names to subschemas (the names are not keywords) and
# keywords whose value is data: neither may be mistaken for a nested ``required``.
_NAMED_SUBSCHEMAS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_DATA_KEYWORDS = ("enum", "const", "default", "examples")
TYPE_WORDS = {
    "string": "a string", "integer": "an integer", "number": "a number",
    "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null",
}

KeyPath = tuple[str | int, ...]


def _packaged_dir() -> Traversable:
    """The packaged defaults; a function so tests can point it at a scratch tree."""
    return resources.files("station.defaults")


def sections() -> list[str]:
    """Every section the packaged tree knows (it has a default file or a schema)."""
    names = set()
    for entry in _packaged_dir().iterdir():
        name = entry.name
        if name.endswith(".schema.yaml"):
            names.add(name.removesuffix(".schema.yaml"))
        elif name.endswith(".yaml"):
            names.add(name.removesuffix(".yaml"))
    return sorted(names)


def load(
    section: str,
    instance: str | None = None,
    etc: Path | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The merged, validated config of one daemon; raises ConfigError listing every problem."""
    merged, problems = _load(section, instance, _etc(etc), overrides)
    if problems or merged is None:
        raise ConfigError(problems)
    return merged


def sources(section: str, instance: str | None = None, etc: Path | None = None) -> list[Path]:
    """The files that feed ``load`` in layer order, so an engineer sees where a value came from."""
    packaged = _packaged_dir() / f"{section}.yaml"
    files, _ = _layer_files(section, instance, _etc(etc))
    return ([Path(str(packaged))] if packaged.is_file() else []) + files


def check(etc: Path) -> list[str]:
    """Validate every section and every instance file under ``etc`` offline; [] means valid.

    Besides what ``load`` reports, a file in ``etc`` whose name belongs to no section, or a
    ``.yml`` file the loader would never read, is reported: it is almost always a typo.
    """
    etc = Path(etc)
    if not etc.is_dir():
        return [f"{etc}: no such directory"]
    known = sections()
    problems: list[str] = []
    instances: dict[str, set[str]] = {name: set() for name in known}
    confd = etc / "conf.d"
    for directory, pattern in ((etc, _ETC_NAME), (confd, _CONFD_NAME)):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.endswith(".yml"):
                problems.append(f"{path}: ignored: config files must end in .yaml")
            if path.name.startswith(".") or not path.name.endswith(".yaml"):
                continue
            match = pattern.fullmatch(path.name)
            if match is None or match["section"] not in known:
                expected = ETC_PATTERN if directory == etc else CONFD_PATTERN
                problems.append(_bad_name(path, match, expected, known))
            elif match["instance"]:
                instances[match["section"]].add(match["instance"])
    for name in known:
        for instance in [None, *sorted(instances[name])]:
            problems.extend(_load(name, instance, etc, ())[1])
    return list(dict.fromkeys(problems))


def _etc(etc: Path | None) -> Path:
    return Path(etc) if etc is not None else Paths.resolve().etc


def _load(
    section: str, instance: str | None, etc: Path, overrides: Sequence[str]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Merged config and every problem found; ``check`` needs the list without the raise."""
    known = sections()
    if section not in known:
        hint = suggest(section, known)
        return None, [f"unknown config section {section!r}{hint}; known: {', '.join(known)}"]
    if instance is not None and not _INSTANCE.fullmatch(instance):
        return None, [f"{section}: instance name {instance!r} is invalid; expected {INSTANCE_PATTERN}"]
    schema, problems = _schema(section)
    if schema is None:
        return None, problems
    relaxed = jsonschema.Draft202012Validator(_relaxed(schema))

    packaged = _packaged_dir() / f"{section}.yaml"
    if not packaged.is_file():
        return None, [f"{packaged}: missing; the packaged defaults must hold every key of {section}"]
    files, problems = _layer_files(section, instance, etc)
    layers: list[dict[str, Any]] = []
    texts = [(str(packaged), packaged.read_bytes())] + [(str(path), _read(path, problems)) for path in files]
    for name, raw in texts:
        if raw is None:
            continue
        data, node, found = _parse(name, raw)
        if data is not None:
            found += _validate(relaxed, name, data, node)
            layers.append(data)
        problems.extend(sorted(found, key=_line_of))
    for text in overrides:
        data, found = _override(text)
        problems.extend(found or _validate(relaxed, COMMAND_LINE, data, None))
        layers.append(data)
    if problems:
        return None, problems

    merged: dict[str, Any] = {}
    for data in layers:
        merged = _merge(merged, data)
    label = f"{section}@{instance}" if instance else section
    problems = _validate(jsonschema.Draft202012Validator(schema), f"{label} (merged)", merged, None)
    return (None if problems else merged), problems


def _schema(section: str) -> tuple[dict[str, Any] | None, list[str]]:
    entry = _packaged_dir() / f"{section}.schema.yaml"
    if not entry.is_file():
        return None, [f"{entry}: missing; section {section!r} has no schema, so it cannot be validated"]
    data, _, problems = _parse(str(entry), entry.read_bytes())
    if problems or data is None:
        return None, problems
    try:
        jsonschema.Draft202012Validator.check_schema(data)
    except jsonschema.SchemaError as exc:
        return None, [f"{entry}: not a valid JSON Schema: {exc.message}"]
    return data, []


def _layer_files(section: str, instance: str | None, etc: Path) -> tuple[list[Path], list[str]]:
    """The etc and conf.d files of one section in layer order, and conf.d names that fit none."""
    names = [f"{section}.yaml"] + ([f"{section}@{instance}.yaml"] if instance else [])
    files = [etc / name for name in names if (etc / name).exists()]
    problems: list[str] = []
    confd = etc / "conf.d"
    if not confd.is_dir():
        return files, problems
    known = sections()
    for path in sorted(confd.glob("*.yaml"), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        match = _CONFD_NAME.fullmatch(path.name)
        if match is None or match["section"] not in known:
            problems.append(_bad_name(path, match, CONFD_PATTERN, known))
        elif match["section"] == section and match["instance"] in (None, instance):
            files.append(path)
    return files, problems


def _bad_name(path: Path, match: re.Match[str] | None, expected: str, known: list[str]) -> str:
    hint = suggest(match["section"], known) if match else ""
    return (f"{path}: file name does not say which section it configures{hint}; "
            f"expected {expected} with <section> one of {', '.join(known)}")


def _read(path: Path, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None


def _parse(name: str, raw: bytes) -> tuple[dict[str, Any] | None, yaml.Node | None, list[str]]:
    """Data and node tree from one parse: the nodes carry the line numbers errors need.

    The data is None when the file cannot be checked against a schema at all.
    """
    try:
        loader = yaml.SafeLoader(raw)  # the reader refuses NUL, control bytes and bad UTF-8 here
    except yaml.YAMLError as exc:
        return None, None, [f"{name}: not a YAML text file: {exc}"]
    try:
        node = loader.get_single_node()
        # Checked before construction: constructing flattens ``<<`` merge keys in place.
        problems, keys_are_strings = _key_problems(name, node)
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        context = ""
        if exc.context and exc.problem:
            at = exc.context_mark
            context = f" ({exc.context}{f' at line {at.line + 1}' if at and at.line != mark.line else ''})"
        return None, None, [f"{where}: YAML syntax error: {exc.problem or exc.context}{context}"]
    except yaml.YAMLError as exc:
        return None, None, [f"{name}: YAML error: {exc}"]
    except RecursionError:
        return None, None, [f"{name}: nested too deeply to be a configuration file"]
    except ValueError as exc:  # e.g. an integer of thousands of digits
        return None, None, [f"{name}: a value cannot be read: {str(exc)[:120]}"]
    finally:
        loader.dispose()
    if data is None:  # a document holding only comments or "~"
        data = {}
    if not isinstance(data, dict):
        line = node.start_mark.line + 1
        return None, None, [f"{name}:{line}: top level must be a mapping of key: value, got {kind_of(data)}"]
    return (data if keys_are_strings else None), node, problems


def _key_problems(name: str, root: yaml.Node | None) -> tuple[list[str], bool]:
    """Duplicate keys (YAML keeps the last silently) and keys that are not strings (``on:``).

    Also says whether every key is a string, which schema validation needs.
    """
    problems: list[str] = []
    keys_are_strings = True
    stack, seen_nodes = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                stack.append(value)
                line = key.start_mark.line + 1
                if key.tag == _MERGE_TAG:
                    continue
                if not (isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG):
                    problems.append(f"{name}:{line}: key {key.value!r} is not a string; quote it")
                    keys_are_strings = False
                elif key.value in first:
                    where = f"{name}:{line}: duplicate key {key.value!r}"
                    problems.append(f"{where} (first at line {first[key.value]})")
                else:
                    first[key.value] = line
    return problems, keys_are_strings


def _override(text: str) -> tuple[dict[str, Any], list[str]]:
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        return {}, [f"{COMMAND_LINE}: {text!r}: expected key.sub=value"]
    try:
        data: Any = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        return {}, [f"{COMMAND_LINE}: {text!r}: value is not valid YAML: {getattr(exc, 'problem', exc)}"]
    for part in reversed(parts):
        data = {part: data}
    return data, []


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _relaxed(schema: Any) -> Any:
    """The schema without ``required``: one file may set a single key, the merge must not."""
    if isinstance(schema, list):
        return [_relaxed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "required":
            continue
        if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            out[key] = {name: _relaxed(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _DATA_KEYWORDS else _relaxed(value)
    return out


def _validate(
    validator: jsonschema.Draft202012Validator, name: str, data: Any, node: yaml.Node | None
) -> list[str]:
    found: list[str] = []
    for error in validator.iter_errors(data):
        for path, message in _explain(error):
            line = _line(node, path)
            found.append(f"{name}:{line}: {message}" if line else f"{name}: {message}")
    return sorted(found, key=_line_of)


def _explain(error: jsonschema.ValidationError) -> Iterable[tuple[KeyPath, str]]:
    """(path of the culprit, message in the user's words): the engineer's words, not the library's."""
    path: KeyPath = tuple(error.absolute_path)
    schema, value, kind = error.schema, error.instance, error.validator
    where = f"{_dotted(path)}: " if path else ""
    if "propertyNames" in error.schema_path:
        rule = f"must match {schema['pattern']}" if kind == "pattern" else error.message
        yield path + (value,), f"{where}key {value!r} is not allowed; keys {rule}{_about(schema)}"
    elif kind == "additionalProperties" and schema.get("additionalProperties") is False:
        allowed = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        for key in value:
            if key in allowed or any(re.search(p, str(key)) for p in patterns):
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?; " if close else ""
            culprit = path + (key,)
            yield culprit, f"unknown key {_dotted(culprit)!r} ({hint}allowed: {', '.join(allowed)})"
    elif kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = " or ".join(TYPE_WORDS.get(t, t) for t in wanted)
        got = kind_of(value) if value is None else f"{kind_of(value)} {_show(value)}"
        yield path, f"{where}expected {expected}, got {got}"
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        yield path, f"{where}{_show(value)} is out of range; allowed {_range(schema)}"
    elif kind in ("enum", "const"):
        choices = schema["enum"] if kind == "enum" else [schema["const"]]
        allowed = ", ".join(map(_show, choices))
        yield path, f"{where}{_show(value)} is not an allowed choice; allowed: {allowed}"
    elif kind == "uniqueItems":
        yield path, f"{where}{_show(value)} repeats an item; each may appear once"
    elif kind in ("minItems", "maxItems"):
        bounds = f"{schema.get('minItems', 0)}..{schema.get('maxItems', '')}"
        yield path, f"{where}has {len(value)} items; allowed {bounds} items"
    elif kind in ("minLength", "maxLength"):
        bounds = f"{schema.get('minLength', 0)}..{schema.get('maxLength', '')}"
        yield path, f"{where}{_show(value)} has {len(value)} characters; allowed {bounds}"
    elif kind == "pattern":
        yield path, f"{where}{_show(value)} does not match {schema['pattern']}{_about(schema)}"
    elif kind == "required":
        for key in error.validator_value:
            if key not in value:
                yield path, f"{where}missing required key {key!r}"
    else:
        yield path, f"{where}{error.message}"


def _line(node: yaml.Node | None, path: KeyPath) -> int | None:
    """1-based line of the key at ``path`` (of the item, in a list; of the nearest ancestor if
    the path goes no further): the key line is where the eye lands, even for a block value."""
    if node is None:
        return None
    key_node: yaml.Node | None = None
    for step in path:
        key_node = None
        if isinstance(node, yaml.MappingNode):
            # The last match wins, as it does when YAML constructs the mapping.
            pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(step)]
            if not pairs:
                break
            key_node, node = pairs[-1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            break
    return (key_node or node).start_mark.line + 1


def _line_of(problem: str) -> tuple[str, int]:
    """Sort key: file, then line number (so 10 sorts after 9)."""
    match = re.match(r"^(.*?):(\d+):", problem)
    return (match[1], int(match[2])) if match else (problem, 0)


def _dotted(path: KeyPath) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _range(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f"{_show(low)}..{_show(high)}"
    parts = []
    signs = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    for word, sign in signs.items():
        if word in schema:
            parts.append(f"{sign} {_show(schema[word])}")
    return " and ".join(parts)


def _about(schema: dict[str, Any]) -> str:
    return f" ({schema['description'].strip()})" if schema.get("description") else ""


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    for kind, words in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                        (dict, "a mapping"), (list, "a list")):
        if isinstance(value, kind):
            return words
    return type(value).__name__


def _show(value: Any) -> str:
    """A value as the user would have written it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value) if isinstance(value, str) else str(value)
