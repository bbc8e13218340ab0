"""Config layering and the messages a field engineer sees when a file is wrong.

Messages are compared whole: the file, line, key and allowed values are the feature.
"""
from __future__ import annotations

import shutil
import textwrap
from importlib import resources
from pathlib import Path

import pytest
import yaml

from station import config
from station.errors import ConfigError

PACKAGED = Path(str(resources.files("station.defaults")))
MINE = ("controller", "enrollment", "fingerprint")
FINGERPRINT_KEYS = ("address, baud, command_timeout_s, finger_wait_s, heartbeat_s, packet_size, "
                    "password, port, retries, upgrade_baud")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(
    section: str, etc: Path, instance: str | None = None, overrides: list[str] = ()
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(section, instance, etc, overrides)
    return info.value.problems


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    return path


@pytest.fixture
def packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A packaged tree of only the sections under test, so others' work in progress can't interfere."""
    tree = tmp_path / "defaults"
    tree.mkdir()
    for section in MINE:
        for suffix in (".yaml", ".schema.yaml"):
            shutil.copy(PACKAGED / f"{section}{suffix}", tree)
    monkeypatch.setattr(config, "_packaged_dir", lambda: tree)
    return tree


# -- layering -------------------------------------------------------------------------------

def test_layers_later_wins_packaged_etc_instance_confd_overrides(etc: Path) -> None:
    write(etc / "fingerprint.yaml", """\
        port: /dev/from-etc
        baud: 115200
        retries: 1
        finger_wait_s: 20
        heartbeat_s: 2.0
    """)
    write(etc / "fingerprint@fp1.yaml", "port: /dev/from-instance\nretries: 2\nfinger_wait_s: 21\n")
    write(etc / "conf.d/10-fingerprint.yaml", "retries: 4\n")
    write(etc / "conf.d/20-fingerprint@fp1.yaml", "finger_wait_s: 30\n")
    write(etc / "conf.d/30-fingerprint@fp2.yaml", "heartbeat_s: 5\n")
    write(etc / "conf.d/40-enrollment.yaml", "attempts: 5\n")

    fp1 = config.load("fingerprint", "fp1", etc, ["finger_wait_s=40"])
    assert fp1["packet_size"] == 128              # packaged only
    assert fp1["baud"] == 115200                  # etc over packaged
    assert fp1["port"] == "/dev/from-instance"    # instance file over etc
    assert fp1["retries"] == 4                    # conf.d over instance file
    assert fp1["finger_wait_s"] == 40             # command line over conf.d
    assert fp1["heartbeat_s"] == 2.0              # conf.d of another instance skipped

    plain = config.load("fingerprint", None, etc)
    assert (plain["port"], plain["retries"], plain["finger_wait_s"]) == ("/dev/from-etc", 4, 20)

    assert config.sources("fingerprint", "fp1", etc) == [
        PACKAGED / "fingerprint.yaml",
        etc / "fingerprint.yaml",
        etc / "fingerprint@fp1.yaml",
        etc / "conf.d/10-fingerprint.yaml",
        etc / "conf.d/20-fingerprint@fp1.yaml",
    ]


def test_mappings_merge_key_by_key_lists_are_replaced(etc: Path) -> None:
    write(etc / "controller.yaml", "store:\n  fsync: false\n")
    write(etc / "conf.d/50-controller.yaml", "store:\n  retention_days: 7\ndrivers:\n  camera: [cam1, cam2]\n")
    write(etc / "enrollment.yaml", "finger_positions: [2, 7]\n")

    controller = config.load("controller", etc=etc)
    assert controller["store"] == {"retention_days": 7, "fsync": False, "min_free_mb": 200}
    assert controller["drivers"] == {"camera": ["cam1", "cam2"], "fingerprint": ["fp0"], "printer": []}
    assert config.load("enrollment", etc=etc)["finger_positions"] == [2, 7]


def test_confd_applies_in_sorted_name_order(etc: Path) -> None:
    # Written out of order: the file system's listing order must not matter.
    write(etc / "conf.d/fingerprint.site.yaml", "retries: 9\n")
    write(etc / "conf.d/20-fingerprint.yaml", "retries: 2\n")
    write(etc / "conf.d/10-fingerprint.yaml", "retries: 1\n")
    assert [p.name for p in config.sources("fingerprint", None, etc)[1:]] == [
        "10-fingerprint.yaml", "20-fingerprint.yaml", "fingerprint.site.yaml"]
    assert config.load("fingerprint", etc=etc)["retries"] == 9
    (etc / "conf.d/fingerprint.site.yaml").unlink()
    assert config.load("fingerprint", etc=etc)["retries"] == 2


def test_empty_and_comment_only_files_change_nothing(etc: Path) -> None:
    write(etc / "fingerprint.yaml", "")
    write(etc / "conf.d/10-fingerprint.yaml", "# nothing tuned here yet\n")
    packaged = yaml.safe_load((PACKAGED / "fingerprint.yaml").read_text())
    assert config.load("fingerprint", etc=etc) == packaged


def test_missing_etc_directory_means_packaged_defaults(tmp_path: Path) -> None:
    packaged = yaml.safe_load((PACKAGED / "enrollment.yaml").read_text())
    assert config.load("enrollment", etc=tmp_path / "absent") == packaged


# -- one problem per file, named by file:line -----------------------------------------------

BAD_FILES = {
    "unknown key with suggestion": (
        "fingerprint", "port: /dev/ttyUSB0\nbaudrate: 57600\n",
        f"{{p}}:2: unknown key 'baudrate' (did you mean 'baud'?; allowed: {FINGERPRINT_KEYS})"),
    "nested unknown key": (
        "controller", "store:\n  fsync: true\n  retension_days: 3\n",
        "{p}:3: unknown key 'store.retension_days' (did you mean 'retention_days'?; "
        "allowed: fsync, min_free_mb, retention_days)"),
    "wrong type": (
        "fingerprint", "baud: 57600\nport: 5\n",
        "{p}:2: port: expected a string, got integer 5"),
    "wrong type in a nested mapping": (
        "controller", "store:\n  fsync: 'yes'\n",
        "{p}:2: store.fsync: expected true or false, got string 'yes'"),
    "out of range": (
        "fingerprint", "retries: 50\n",
        "{p}:1: retries: 50 is out of range; allowed 0..10"),
    "out of range, fractional bound": (
        "fingerprint", "command_timeout_s: 0.05\n",
        "{p}:1: command_timeout_s: 0.05 is out of range; allowed 0.1..10"),
    "out of range inside a list": (
        "enrollment", "finger_positions:\n  - 1\n  - 11\n",
        "{p}:3: finger_positions[1]: 11 is out of range; allowed 1..10"),
    "bad enum": (
        "fingerprint", "packet_size: 100\n",
        "{p}:1: packet_size: 100 is not an allowed choice; allowed: 32, 64, 128, 256"),
    "repeated list item": (
        "enrollment", "finger_positions: [1, 1]\n",
        "{p}:1: finger_positions: [1, 1] repeats an item; each may appear once"),
    "bad mapping key": (
        "enrollment", "exception_reasons:\n  xx: bandaged\n",
        "{p}:2: exception_reasons: key 'xx' is not allowed; keys must match ^[A-Z]{{2}}$ "
        "(a two-letter upper-case ANSI/NIST code such as XX or UP)"),
    "bad instance name": (
        "controller", "drivers:\n  camera: [Cam0]\n",
        "{p}:2: drivers.camera[0]: 'Cam0' does not match ^[a-z][a-z0-9_-]{{0,31}}$ "
        "(lower-case letter, then up to 31 of a-z 0-9 _ -)"),
    "bad YAML syntax": (
        "fingerprint", "port: /dev/x\nbaud: [57600\nretries: 3\n",
        "{p}:3:8: YAML syntax error: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 2)"),
    "top level is a list": (
        "fingerprint", "- port: /dev/x\n- baud: 9600\n",
        "{p}:1: top level must be a mapping of key: value, got a list"),
    "top level is a scalar": (
        "fingerprint", "/dev/ttyUSB0\n",
        "{p}:1: top level must be a mapping of key: value, got string"),
    "duplicate key": (
        "fingerprint", "retries: 2\nport: /dev/x\nretries: 3\n",
        "{p}:3: duplicate key 'retries' (first at line 1)"),
    "key YAML reads as a boolean": (
        "enrollment", "exception_reasons:\n  XX: amputated\n  on: leave\n",
        "{p}:3: key 'on' is not a string; quote it"),
}


@pytest.mark.parametrize("section,text,expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_each_problem_names_file_line_key_and_what_is_allowed(
    etc: Path, section: str, text: str, expected: str
) -> None:
    path = write(etc / "conf.d" / f"50-{section}.yaml", text)
    assert problems_of(section, etc) == [expected.format(p=path)]


def test_duplicate_key_the_later_value_is_the_one_checked(etc: Path) -> None:
    path = write(etc / "fingerprint.yaml", "retries: 2\nport: /dev/x\nretries: 30\n")
    assert problems_of("fingerprint", etc) == [
        f"{path}:3: duplicate key 'retries' (first at line 1)",
        f"{path}:3: retries: 30 is out of range; allowed 0..10",
    ]


def test_confd_file_with_unrecognised_name_is_an_error(etc: Path) -> None:
    bad = write(etc / "conf.d/50-camra.yaml", "source: {fps: 15}\n")
    unparsable = write(etc / "conf.d/lowlight_camera.yaml", "")
    known = ", ".join(config.sections())
    pattern = "[NN-]<section>[@<instance>][.<note>].yaml"
    assert problems_of("fingerprint", etc) == [
        f"{bad}: file name does not say which section it configures (did you mean 'camera'?); "
        f"expected {pattern} with <section> one of {known}",
        f"{unparsable}: file name does not say which section it configures; "
        f"expected {pattern} with <section> one of {known}",
    ]


def test_all_problems_across_files_are_collected_at_once(etc: Path) -> None:
    base = write(etc / "fingerprint.yaml", "baudrate: 9600\nport: /dev/ttyUSB0\n")
    instance = write(etc / "fingerprint@fp1.yaml", "port: 7\n")
    confd = write(etc / "conf.d/50-fingerprint.yaml", "retries: -1\npacket_size: 100\n")
    problems = problems_of("fingerprint", etc, "fp1", ["heartbeat_s=99"])
    assert problems == [
        f"{base}:1: unknown key 'baudrate' (did you mean 'baud'?; allowed: {FINGERPRINT_KEYS})",
        f"{instance}:1: port: expected a string, got integer 7",
        f"{confd}:1: retries: -1 is out of range; allowed 0..10",
        f"{confd}:2: packet_size: 100 is not an allowed choice; allowed: 32, 64, 128, 256",
        "<command line>: heartbeat_s: 99 is out of range; allowed 0.2..10",
    ]
    assert str(ConfigError(problems)) == "\n".join(problems)


def test_unknown_section_and_bad_instance_name(etc: Path) -> None:
    assert problems_of("fingerprnt", etc) == [
        f"unknown config section 'fingerprnt' (did you mean 'fingerprint'?); "
        f"known: {', '.join(config.sections())}"]
    assert problems_of("fingerprint", etc, "../fp0") == [
        "fingerprint: instance name '../fp0' is invalid; expected [a-z][a-z0-9_-]{0,31}"]


# -- command-line overrides -----------------------------------------------------------------

def test_overrides_are_parsed_as_yaml_and_merged_deeply(etc: Path) -> None:
    fingerprint = config.load("fingerprint", "fp0", etc, [
        "baud=115200", "command_timeout_s=2.5", "port=/dev/ttyUSB0", "address=0xFFFFFFFE"])
    assert (fingerprint["baud"], fingerprint["command_timeout_s"]) == (115200, 2.5)
    assert (fingerprint["port"], fingerprint["address"]) == ("/dev/ttyUSB0", 0xFFFFFFFE)

    controller = config.load("controller", None, etc, ["drivers.camera=[cam0, cam1]", "store.fsync=false"])
    assert controller["drivers"] == {"camera": ["cam0", "cam1"], "fingerprint": ["fp0"], "printer": []}
    assert controller["store"] == {"retention_days": 30, "fsync": False, "min_free_mb": 200}


def test_bad_overrides_are_reported_as_command_line(etc: Path) -> None:
    assert problems_of("fingerprint", etc, None, ["retries=abc", "baud", "retries=11", "baudrate=9600"]) == [
        "<command line>: retries: expected an integer, got string 'abc'",
        "<command line>: 'baud': expected key.sub=value",
        "<command line>: retries: 11 is out of range; allowed 0..10",
        f"<command line>: unknown key 'baudrate' (did you mean 'baud'?; allowed: {FINGERPRINT_KEYS})",
    ]


# -- stationctl config check ----------------------------------------------------------------

def write_valid_etc(etc: Path) -> None:
    write(etc / "fingerprint.yaml", "port: /dev/station/fp\nbaud: 57600\n")
    write(etc / "fingerprint@fp1.yaml", "port: /dev/station/fp1\n")
    write(etc / "controller.yaml", "drivers:\n  fingerprint: [fp0, fp1]\n")
    write(etc / "conf.d/10-enrollment.yaml", "nfiq2_accept: 50\nexception_reasons:\n  BD: bandaged\n")
    write(etc / "conf.d/50-fingerprint@fp2.night.yaml", "finger_wait_s: 30\n")


def test_check_on_a_valid_etc_returns_no_problems(packaged_copy: Path, etc: Path) -> None:
    write_valid_etc(etc)
    assert config.check(etc) == []


def test_check_visits_instances_found_only_in_confd_and_stray_names(packaged_copy: Path, etc: Path) -> None:
    write_valid_etc(etc)
    bad = write(etc / "conf.d/60-fingerprint@fp3.yaml", "retries: 99\n")
    stray = write(etc / "fingerprnt.yaml", "retries: 2\n")
    ignored = write(etc / "conf.d/20-enrollment.yml", "attempts: 2\n")
    assert config.check(etc) == [
        f"{stray}: file name does not say which section it configures (did you mean 'fingerprint'?); "
        "expected <section>[@<instance>].yaml with <section> one of controller, enrollment, fingerprint",
        f"{ignored}: ignored: config files must end in .yaml",
        f"{bad}:1: retries: 99 is out of range; allowed 0..10",
    ]


def test_check_on_a_missing_directory(tmp_path: Path) -> None:
    assert config.check(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such directory"]


# -- the packaged defaults and schemas ------------------------------------------------------

@pytest.mark.parametrize("section", config.sections())
def test_packaged_defaults_validate_against_their_schema(section: str, tmp_path: Path) -> None:
    packaged = yaml.safe_load((PACKAGED / f"{section}.yaml").read_text())
    assert config.load(section, None, tmp_path) == packaged


@pytest.mark.parametrize("section", MINE)
def test_schemas_require_every_key_reject_unknown_ones_and_explain_each(section: str) -> None:
    schema = yaml.safe_load((PACKAGED / f"{section}.schema.yaml").read_text())
    defs = schema.get("$defs", {})

    def walk(node: dict, where: str) -> None:
        if "properties" not in node:
            return
        assert node.get("additionalProperties") is False, where
        assert set(node.get("required", [])) == set(node["properties"]), where
        for name, sub in node["properties"].items():
            resolved = defs[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub
            assert resolved.get("description"), f"{where}.{name}"
            walk(resolved, f"{where}.{name}")

    walk(schema, section)


def test_a_key_missing_from_the_packaged_defaults_is_caught(packaged_copy: Path, etc: Path) -> None:
    defaults = packaged_copy / "fingerprint.yaml"
    defaults.write_text("\n".join(line for line in defaults.read_text().splitlines()
                                  if not line.startswith("baud:")))
    assert problems_of("fingerprint", etc, "fp0") == ["fingerprint@fp0 (merged): missing required key 'baud'"]
