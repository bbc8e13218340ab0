"""The console's message catalogs hold every code the station can show, in both languages.

The console translates by stable code, never by parsing English text, so a code added
anywhere in station/ or drivers/ without a catalog entry would put an English log message
(or a bare code) in front of an officer. Each family of codes is read from where it is
defined — a table where there is one, the source where codes are written at raise sites —
and held to ``station/console/i18n/messages.{vi,en}.yaml``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from drivers.camera import quality
from drivers.fingerprint.protocol import Confirmation
from drivers.printer import protocol as printer
from station import demographics, enrollment, nist
from station.errors import CODES

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = {lang: ROOT / "station" / "console" / "i18n" / f"messages.{lang}.yaml" for lang in ("vi", "en")}
SOURCE_DIRS = (ROOT / "station", ROOT / "drivers")

# Codes written at raise sites in station/ and drivers/ that never reach an operator.
NOT_FOR_OPERATORS = {
    # station/demo.py: the demo run's own verdicts, printed to whoever runs `stationctl demo`.
    "demo", "not_delivered", "export_failed", "duplicate_not_refused",
    # station/demographics.py: a Problem code kept in a local named `code` (see problem.*).
    "before_1900",
}

# `code="x"`, `code = "x"` (keyword or class attribute, optionally annotated) and the
# collector's `link.error("x", ...)` replies.
_LITERAL_CODE = re.compile(r"""(?<![\w.])code(?:\s*:\s*[\w| ]+)?\s*=\s*["']([a-z0-9_]+)["']"""
                           r"""|\blink\.error\(\s*["']([a-z0-9_]+)["']""")
# `code=f"prefix_{...}"`: a family of codes, each family listed in DYNAMIC_CODES.
_DYNAMIC_CODE = re.compile(r"""(?<![\w.])code\s*=\s*f["']([a-z0-9_]*)\{""")
DYNAMIC_CODES = {
    # drivers/fingerprint/protocol.py SensorError: the sensor's confirmation codes.
    "fingerprint_": {f"fingerprint_{c.name.lower()}" for c in Confirmation if c is not Confirmation.OK},
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a catalog must not."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _load(lang: str) -> dict:
    data = yaml.load(CATALOGS[lang].read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    assert isinstance(data, dict), f"{CATALOGS[lang]}: not a mapping"
    return data


@pytest.fixture(scope="module")
def catalogs() -> dict[str, dict]:
    return {lang: _load(lang) for lang in CATALOGS}


def _sources() -> list[Path]:
    return [path for root in SOURCE_DIRS for path in sorted(root.rglob("*.py"))
            if not path.name.startswith("test_") and "tests" not in path.parts]


def _raised_codes() -> dict[str, str]:
    """Code -> the first file:line writing it, over station/ and drivers/."""
    found: dict[str, str] = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for match in _LITERAL_CODE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group(1) or match.group(2), f"{path.relative_to(ROOT)}:{line}")
    return found


def _dynamic_prefixes() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for match in _DYNAMIC_CODE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group(1), f"{path.relative_to(ROOT)}:{line}")
    return found


def _problem_codes() -> set[str]:
    """The demographics module's CODES and every code literally given to Problem(...)."""
    text = (ROOT / "station" / "demographics.py").read_text(encoding="utf-8")
    scanned = set(re.findall(r"""Problem\(\s*[^,()]+,\s*["']([a-z0-9_]+)["']""", text))
    return set(demographics.CODES) | scanned


def _feedback_codes() -> set[str]:
    """Every code station/biometrics.py ``_feedback`` appends: it has no table to import."""
    tree = ast.parse((ROOT / "station" / "biometrics.py").read_text(encoding="utf-8"))
    function = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "_feedback")
    return {call.args[0].value for call in ast.walk(function)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "append"
            and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)}


def _schema_fields() -> list[str]:
    schema = yaml.safe_load((ROOT / "station" / "schemas" / "applicant.schema.yaml").read_text(encoding="utf-8"))
    return list(schema["properties"])


def _error_codes() -> set[str]:
    raised = set(_raised_codes()) - NOT_FOR_OPERATORS
    return set(CODES) | set(printer.CODES) | raised | set().union(*DYNAMIC_CODES.values())


def expected_keys() -> dict[str, set[str]]:
    """Family -> every key the catalogs must have for it."""
    fields = _schema_fields()
    return {
        "hint": {f"hint.{code}" for code in quality.HINTS},
        "error": {f"error.{code}" for code in _error_codes()},
        "problem": {f"problem.{code}" for code in _problem_codes()},
        "field": {f"field.{name}" for name in fields} | {f"field.{name}.help" for name in fields},
        "sex": {"sex.M", "sex.F"},
        "finger": {f"finger.{position}" for position in enrollment.FINGER_NAMES},
        "exception": {f"exception.{code}" for code in nist.AMP_CODES},
        "feedback": {f"feedback.{code}" for code in _feedback_codes()},
        "step": {f"step.{name}" for name in (*enrollment.STEPS, enrollment.FINISHED,
                                              enrollment.CANCELLED, enrollment.EXPIRED)},
        "printer": {f"printer.{condition}" for condition in printer.Condition},
    }


def test_both_catalogs_have_the_same_keys(catalogs):
    vi, en = set(catalogs["vi"]), set(catalogs["en"])
    assert not vi - en, f"only in messages.vi.yaml: {sorted(vi - en)}"
    assert not en - vi, f"only in messages.en.yaml: {sorted(en - vi)}"


@pytest.mark.parametrize("lang", CATALOGS)
def test_every_value_is_non_empty_text(catalogs, lang):
    bad = {key: value for key, value in catalogs[lang].items() if not isinstance(value, str) or not value.strip()}
    assert not bad, f"messages.{lang}.yaml: empty or not text: {bad}"


@pytest.mark.parametrize("family", sorted(expected_keys()))
def test_every_code_of_the_family_is_translated(catalogs, family):
    missing = sorted(expected_keys()[family] - set(catalogs["vi"]))
    assert not missing, f"messages.*.yaml lack: {missing}"


def test_no_key_outside_the_known_codes(catalogs):
    """A key for a code nobody sends any more is dead text; so is a misspelt one."""
    expected = set().union(*expected_keys().values())
    stale = sorted(set(catalogs["vi"]) - expected)
    assert not stale, f"keys no code produces (renamed or removed?): {stale}"


def test_raised_codes_are_in_the_catalog_or_the_allowlist(catalogs):
    """The raise-site scan names the file:line of a code that has no error.<code>."""
    untranslated = {code: where for code, where in _raised_codes().items()
                    if code not in NOT_FOR_OPERATORS and f"error.{code}" not in catalogs["vi"]}
    assert not untranslated, f"add error.<code> to messages.*.yaml for: {untranslated}"


def test_every_allowlisted_code_is_still_raised():
    gone = NOT_FOR_OPERATORS - set(_raised_codes())
    assert not gone, f"NOT_FOR_OPERATORS lists codes no longer raised: {sorted(gone)}"


def test_every_dynamic_code_family_is_known():
    unknown = {prefix: where for prefix, where in _dynamic_prefixes().items() if prefix not in DYNAMIC_CODES}
    assert not unknown, f"code=f'...' families without an entry in DYNAMIC_CODES: {unknown}"


def test_the_scans_find_something():
    """A regex broken by a refactor would find nothing and pass everything above."""
    assert {"wrong_step", "no_session", "duplicate_finger", "invalid_demographics"} <= set(_raised_codes())
    assert {"required", "century_sex_mismatch", "unknown_field"} <= _problem_codes()
    assert {"small_contact_area", "too_few_minutiae"} <= _feedback_codes()
    assert "fingerprint_" in _dynamic_prefixes()


def test_vietnamese_catalog_is_vietnamese(catalogs):
    vi, en = catalogs["vi"], catalogs["en"]
    ascii_only = sorted(key for key, value in vi.items() if value.isascii())
    assert len(ascii_only) <= 0.1 * len(vi), f"Vietnamese values without a diacritic: {ascii_only}"
    same = sorted(key for key in vi if key in en and vi[key] == en[key])
    assert not same, f"Vietnamese equals English for: {same}"


def test_quality_report_carries_the_hint_code(scene_and_analyzer):
    from drivers.camera.scene import SceneParams

    scene, analyzer = scene_and_analyzer
    assert set(quality.FAILURE_HINTS.values()) == set(quality.HINTS), "a hint code no failure gives, or none"
    for params, code in ((SceneParams(), None), (SceneParams(brightness=0.35), "too_dark"),
                         (SceneParams(faces=0), "no_face")):
        report = analyzer.analyze(scene.render(params, 0)).to_dict()
        assert report["hint_code"] == code, report
        assert report["hint"] == (None if code is None else quality.HINTS[code])


@pytest.fixture(scope="module")
def scene_and_analyzer():
    """The emulated scene and analyzer of tests/camera/conftest.py, built the same way."""
    from drivers.camera.detector import make_detector
    from drivers.camera.scene import Scene

    defaults = yaml.safe_load((ROOT / "config" / "camera.yaml").read_text())
    return Scene(1280, 720, seed=0), quality.FaceAnalyzer(defaults["quality"], make_detector(defaults["detector"]))
