"""The systemd integration in systemd/ is checked by systemd's own tools.

Units are verified with `systemd-analyze verify --recursive-errors=yes` (any output fails)
and scored with `systemd-analyze security --offline=true`; sysusers.d and tmpfiles.d are
applied to a scratch root; the udev rules are parsed. The tools come from Debian's
`systemd` package (`procps` provides the /bin/kill of ExecReload=); a missing tool fails
the test with that hint instead of skipping it, because an unchecked unit is how a station
ends up with a daemon that never starts. The kiosk unit starts Debian's `cage` and
`chromium`, which verify needs installed too; its managed browser policy is checked against
the console's packaged default URL and against the policy names the installed Chromium
knows.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
APPLIANCE_BIN = "/opt/station/bin/"
# Console scripts of the running interpreter: where `pip install` put station-camerad etc.
# Not resolved: a venv's python is a symlink to the system interpreter.
SCRIPTS_DIR = Path(sys.executable).parent

# unit file -> (unit name to check, worst allowed exposure)
SERVICES = {
    "station-camerad@.service": ("station-camerad@cam0.service", 1.5),
    "station-fingerprintd@.service": ("station-fingerprintd@fp0.service", 1.5),
    "station-printerd@.service": ("station-printerd@printer0.service", 1.5),
    "station-controller.service": ("station-controller.service", 1.0),
    "station-uplink.service": ("station-uplink.service", 1.5),
    "station-collector.service": ("station-collector.service", 1.5),
    "station-console.service": ("station-console.service", 1.0),
    # A Wayland compositor and a browser: host devices, user namespaces for Chromium's
    # sandbox, JIT memory, loopback IP (see the unit's comments). 2.4 when written.
    "station-kiosk.service": ("station-kiosk.service", 2.5),
}
# Units that start only Debian's programs, not a console script of this package.
SYSTEM_PROGRAM_UNITS = {"station-kiosk.service"}
UNIT_FILES = [*SERVICES, "station.target"]
INSTALL_HINT = "install Debian package 'systemd' (and 'procps' for /bin/kill)"
# Programs the units start that are not ours, and the Debian package that provides each;
# `systemd-analyze verify` fails on a missing one.
DEBIAN_PROGRAMS = {"/bin/kill": "procps", "/bin/bash": "bash", "/usr/bin/cage": "cage",
                   "/usr/bin/chromium": "chromium"}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}; the systemd units cannot be checked")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C.UTF-8")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def _exec_programs(unit_text: str) -> list[str]:
    """The programs named by Exec*= lines (first word, without systemd's prefixes)."""
    programs = []
    for line in unit_text.splitlines():
        m = re.match(r"Exec\w+=\s*[-@:+!]*(\S+)", line)
        if m:
            programs.append(m.group(1))
    return programs


def _logical_lines(unit_text: str) -> list[str]:
    """The unit's lines with systemd's backslash continuations joined."""
    return re.sub(r"\\\n[ \t]*", " ", unit_text).splitlines()


def _unit_settings(unit_text: str) -> list[tuple[str, str]]:
    return [
        (k.strip(), v.strip())
        for k, _, v in (
            line.partition("=")
            for line in _logical_lines(unit_text)
            if "=" in line and not line.lstrip().startswith(("#", ";"))
        )
    ]


@pytest.fixture(scope="module")
def staged_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with only the appliance venv prefix pointed at this interpreter's scripts.

    `systemd-analyze verify` requires every Exec binary to exist, so the appliance path
    /opt/station/bin/ is swapped for SCRIPTS_DIR; everything else is verified as shipped.
    """
    staged = tmp_path_factory.mktemp("units")
    for name in UNIT_FILES:
        text = (SYSTEMD_DIR / name).read_text()
        (staged / name).write_text(text.replace(APPLIANCE_BIN, f"{SCRIPTS_DIR}/"))
    return staged


@pytest.mark.parametrize("unit_file", list(SERVICES))
def test_units_start_installed_console_scripts(unit_file: str) -> None:
    """Each unit starts a console script this package really installs, from the appliance venv."""
    programs = _exec_programs((SYSTEMD_DIR / unit_file).read_text())
    ours = [p for p in programs if p.startswith(APPLIANCE_BIN)]
    if unit_file in SYSTEM_PROGRAM_UNITS:
        assert not ours and programs, f"{unit_file} should start Debian's programs only"
    else:
        assert ours, f"{unit_file}: no ExecStart= under {APPLIANCE_BIN}"
    for program in ours:
        script = SCRIPTS_DIR / program.removeprefix(APPLIANCE_BIN)
        assert script.is_file() and os.access(script, os.X_OK), (
            f"{unit_file} runs {program}, but {script} is not an installed console script "
            f"(pip install -e . creates it from setup.py's entry points)"
        )
    for program in programs:
        if not program.startswith(APPLIANCE_BIN):
            assert Path(program).is_absolute(), f"{unit_file}: {program} is not absolute"


def test_systemd_analyze_verify_is_silent(staged_units: Path) -> None:
    for unit_file in SERVICES:
        for program in _exec_programs((SYSTEMD_DIR / unit_file).read_text()):
            if program in DEBIAN_PROGRAMS and not os.access(program, os.X_OK):
                pytest.fail(f"{program} (started by {unit_file}) is missing: install Debian "
                            f"package '{DEBIAN_PROGRAMS[program]}'; verify needs every Exec program")
    argv = [
        _tool("systemd-analyze"),
        "verify",
        "--recursive-errors=yes",
        str(staged_units / "station.target"),
        *(str(staged_units / instance) for instance, _ in SERVICES.values()),
    ]
    result = _run(*argv)
    report = f"$ {' '.join(argv)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert result.stdout == "" and result.stderr == "", f"verify warned:\n{report}"


@pytest.mark.parametrize("unit_file", list(SERVICES))
def test_security_exposure(staged_units: Path, unit_file: str) -> None:
    instance, worst = SERVICES[unit_file]
    result = _run(_tool("systemd-analyze"), "security", "--offline=true", str(staged_units / instance))
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    m = re.search(rf"Overall exposure level for {re.escape(instance)}: (\d+\.\d+)", result.stdout)
    assert m, f"no exposure level in the output:\n{report}"
    exposure = float(m.group(1))
    assert exposure <= worst, f"{instance}: exposure {exposure} > {worst}\n{report}"


def test_units_agree_with_sysusers_and_udev() -> None:
    """The user and groups the units run as are created by sysusers.d; device templates
    wait for the link the udev rules make."""
    sysusers = (SYSTEMD_DIR / "sysusers.d" / "station.conf").read_text()
    declared = {
        (f[0], f[1])
        for f in (line.split() for line in sysusers.splitlines())
        if f and not f[0].startswith("#")
    }
    rules = (SYSTEMD_DIR / "99-station.rules").read_text()
    for unit_file in SERVICES:
        settings = dict(_unit_settings((SYSTEMD_DIR / unit_file).read_text()))
        if settings.get("DynamicUser") == "yes":  # the data centre's gateway: systemd allocates it
            assert "StateDirectory" in settings, f"{unit_file}: a dynamic user needs a StateDirectory="
            continue
        assert ("u", settings["User"]) in declared, f"{unit_file}: User= not in sysusers.d"
        for group in settings.get("SupplementaryGroups", "").split():
            assert ("g", group) in declared, f"{unit_file}: group {group} not in sysusers.d"
        if unit_file.endswith("@.service"):
            assert settings.get("ConditionPathExists") == "/dev/station/%i", unit_file
            template = unit_file.removesuffix(".service")
            assert f'ENV{{SYSTEMD_WANTS}}+="{template}$env{{' in rules, (
                f"no udev rule starts {unit_file}"
            )


# --- udev ----------------------------------------------------------------------------

UDEV_MATCH_KEYS = {
    "ACTION", "DEVPATH", "KERNEL", "NAME", "SYMLINK", "SUBSYSTEM", "DRIVER", "ATTR",
    "SYSCTL", "KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS", "ENV", "CONST", "TAG",
    "TEST", "PROGRAM", "RESULT",
}
UDEV_ASSIGN_KEYS = {
    "NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "ATTR", "SYSCTL", "ENV", "TAG",
    "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS",
}
UDEV_PAIR = re.compile(
    r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*'
    r'"(?P<value>(?:[^"\\]|\\.)*)"\s*(?P<sep>,?)'
)


def _udev_rules(text: str, with_examples: bool) -> list[tuple[int, list[dict[str, str]]]]:
    """Each rule as its KEY op "value" pairs; commented example rules too if asked."""
    rules = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if with_examples and re.match(r"#[A-Z]+[{=!+:-]", line):
            line = line[1:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs, pos = [], 0
        while pos < len(line):
            m = UDEV_PAIR.match(line, pos)
            assert m, f"99-station.rules:{lineno}: cannot parse at column {pos + 1}: {line[pos:]!r}"
            pairs.append(m.groupdict())
            pos = m.end()
            if not m["sep"] and line[pos:].strip():
                pytest.fail(f"99-station.rules:{lineno}: missing comma before {line[pos:]!r}")
        rules.append((lineno, pairs))
    return rules


def test_udev_rules_parse() -> None:
    text = (SYSTEMD_DIR / "99-station.rules").read_text()
    rules = _udev_rules(text, with_examples=True)
    assert len(rules) > len(_udev_rules(text, with_examples=False)), "no example rules"
    wants_templates = set()
    for lineno, pairs in rules:
        where = f"99-station.rules:{lineno}"
        for p in pairs:
            if p["op"] in ("==", "!="):
                assert p["key"] in UDEV_MATCH_KEYS, f"{where}: {p['key']} cannot be matched"
            else:
                assert p["key"] in UDEV_ASSIGN_KEYS, f"{where}: {p['key']} cannot be assigned"
            if p["key"] == "MODE" and p["op"] != "==":
                assert re.fullmatch(r"0[0-7]{3}", p["value"]), f"{where}: MODE {p['value']}"
            if p["key"] == "SYMLINK" and p["op"] != "==":
                assert p["value"].startswith("station/"), f"{where}: link outside /dev/station"
        keys = {(p["key"], p["attr"]) for p in pairs}
        if ("ENV", "SYSTEMD_WANTS") in keys:
            assert any(p["key"] == "TAG" and p["value"] == "systemd" for p in pairs), (
                f"{where}: SYSTEMD_WANTS without TAG+=\"systemd\" is ignored by systemd"
            )
            for p in pairs:
                if p["attr"] == "SYSTEMD_WANTS":
                    m = re.fullmatch(r"(station-[a-z]+@)\$env\{(\w+)\}\.service", p["value"])
                    assert m, f"{where}: unexpected SYSTEMD_WANTS {p['value']!r}"
                    wants_templates.add(m.group(1) + ".service")
                    assert f'SYMLINK+="station/$env{{{m.group(2)}}}"' in text, (
                        f"{where}: the link and the unit instance must use the same name"
                    )
    assert wants_templates == {u for u in SERVICES if "@" in u}
    labels = re.findall(r'LABEL="(\w+)"', text)
    for target in re.findall(r'GOTO="(\w+)"', text):
        assert target in labels, f"GOTO {target} has no LABEL"


# --- sysusers.d and tmpfiles.d -------------------------------------------------------------


def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = _run(
        _tool("systemd-sysusers"), f"--root={root}", str(SYSTEMD_DIR / "sysusers.d" / "station.conf")
    )
    assert sysusers.returncode == 0, sysusers.stderr

    passwd = {
        f[0]: f for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    }
    groups = {
        f[0]: f for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    }
    assert {"station", "video", "dialout"} <= groups.keys(), groups
    user = passwd["station"]
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000 and gid == int(groups["station"][2]), f"not a system user: {user}"
    assert user[6] in ("/usr/sbin/nologin", "/sbin/nologin"), f"station has a login shell: {user}"

    # The kiosk's own unprivileged user: a system user with its state directory as home, in
    # the DRM and input groups, and outside group station (no ipc://, no config, no store).
    kiosk = passwd["station-kiosk"]
    assert int(kiosk[2]) < 1000 and kiosk[5] == "/var/lib/station-kiosk", kiosk
    assert kiosk[6] in ("/usr/sbin/nologin", "/sbin/nologin"), f"station-kiosk has a login shell: {kiosk}"
    for group in ("video", "render", "input"):
        assert "station-kiosk" in groups[group][3].split(","), f"station-kiosk not in group {group}"
    assert "station-kiosk" not in groups["station"][3].split(","), "the kiosk must not join group station"

    # With --root, tmpfiles resolves "station" from the scratch root's /etc/passwd.
    tmpfiles = _run(
        _tool("systemd-tmpfiles"), f"--root={root}", "--create",
        str(SYSTEMD_DIR / "tmpfiles.d" / "station.conf"),
    )
    if os.geteuid() == 0:
        assert tmpfiles.returncode == 0, tmpfiles.stderr
    else:
        # Unprivileged, only the chown to the station user can fail; every mode still applies.
        errors = [line for line in tmpfiles.stderr.splitlines() if line.strip()]
        unexpected = [e for e in errors if not re.match(r"fchownat\(\) of .* Operation not permitted", e)]
        assert not unexpected, tmpfiles.stderr

    expected = {
        "etc/station": (0o750, 0, gid),
        "etc/station/conf.d": (0o750, 0, gid),
        "var/lib/station": (0o750, uid, gid),
        "var/lib/station/keys": (0o700, uid, gid),
        "var/lib/station/console": (0o700, uid, gid),
        "run/station": (0o750, uid, gid),
    }
    for rel, (mode, owner, group) in expected.items():
        st = (root / rel).stat()
        assert stat.S_ISDIR(st.st_mode), rel
        assert stat.S_IMODE(st.st_mode) == mode, f"/{rel}: mode {stat.S_IMODE(st.st_mode):o}"
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (owner, group), f"/{rel}: owner {st.st_uid}:{st.st_gid}"


# --- the web console and the kiosk ----------------------------------------------------------

KIOSK_POLICY = SYSTEMD_DIR / "kiosk" / "station-kiosk.json"
# The console's packaged defaults, where its `listen:` host and port are set.
CONSOLE_DEFAULTS = REPO / "config" / "console.yaml"
# Debian's chromium: /usr/bin/chromium is a shell wrapper around this binary.
CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
# Chromium's URLBlocklist/URLAllowlist filter format:
# [scheme://][.]host[:port][/path][@query]
URL_FILTER = re.compile(
    r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<exact>\.)?(?P<host>\[[0-9a-f:]+\]|[^/:@]+)"
    r"(?::(?P<port>\d+))?(?P<path>/[^@]*)?(?:@(?P<query>.*))?$"
)
# "*" in URLBlocklist does not block Chromium's own pages (chrome://version, chrome://policy
# and chrome://inspect load under ["*"] alone, Chromium 150), so they are listed.
INTERNAL_SCHEMES = ("chrome", "chrome-untrusted", "chrome-extension", "chrome-search", "devtools")
# The lockdown the kiosk relies on (policy name -> required value).
KIOSK_LOCKDOWN = {
    "DeveloperToolsAvailability": 2,  # dev tools disallowed everywhere
    "DownloadRestrictions": 3,  # every download blocked (Save page as... too)
    "AllowFileSelectionDialogs": False,
    "ExtensionInstallBlocklist": ["*"],
    "IncognitoModeAvailability": 1,  # incognito disabled
    "BrowserGuestModeEnabled": False,
    "BrowserAddPersonEnabled": False,
    "BrowserSignin": 0,
    "SyncDisabled": True,
    "PasswordManagerEnabled": False,
    "AutofillAddressEnabled": False,
    "AutofillCreditCardEnabled": False,
    "PrintingEnabled": False,
    "TranslateEnabled": False,
    "DefaultBrowserSettingEnabled": False,
    "VideoCaptureAllowed": False,  # the cameras belong to camerad
    "AudioCaptureAllowed": False,
    "DefaultWebUsbGuardSetting": 2,  # scanners, printers and card readers belong to the drivers
    "DefaultSerialGuardSetting": 2,
    "DefaultWebHidGuardSetting": 2,
}


def _console_listen() -> tuple[str, int]:
    listen = yaml.safe_load(CONSOLE_DEFAULTS.read_text())["listen"]
    return str(listen["host"]), int(listen["port"])


def _kiosk_url() -> str:
    settings = dict(_unit_settings((SYSTEMD_DIR / "station-kiosk.service").read_text()))
    return settings["ExecStart"].split()[-1]


def _policy() -> dict:
    return json.loads(KIOSK_POLICY.read_text())


def test_console_unit_is_a_loopback_station_daemon() -> None:
    settings = _unit_settings((SYSTEMD_DIR / "station-console.service").read_text())
    single = dict(settings)
    assert single["Type"] == "notify" and single["WatchdogSec"] == "10s"
    assert single["User"] == "station" and single["Group"] == "station"
    assert single["PartOf"] == "station.target" and single["WantedBy"] == "station.target"
    assert single["IPAddressAllow"] == "localhost" and single["IPAddressDeny"] == "any"
    assert set(single["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "PrivateNetwork" not in single, "the kiosk reaches the console on the host's loopback"
    assert ("BindPaths", "/var/lib/station/console") in settings


def test_kiosk_and_console_agree_on_the_url() -> None:
    """The kiosk opens, waits for and is allowed exactly the console's packaged default URL."""
    host, port = _console_listen()
    assert host in ("127.0.0.1", "::1"), f"console.yaml listens on {host}, not loopback"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    assert _kiosk_url() == url, f"station-kiosk.service opens {_kiosk_url()}, the console serves {url}"
    pre = dict(_unit_settings((SYSTEMD_DIR / "station-kiosk.service").read_text()))["ExecStartPre"]
    assert f"/dev/tcp/{host}/{port}" in pre, "ExecStartPre waits for another port"
    policy = _policy()
    for name in ("HomepageLocation", "NewTabPageLocation"):
        assert policy[name] == url, name
    assert policy["RestoreOnStartupURLs"] == [url]


def test_kiosk_policy_allows_only_the_console() -> None:
    _, port = _console_listen()
    policy = _policy()
    block, allow = policy["URLBlocklist"], policy["URLAllowlist"]
    assert "*" in block, "the kiosk must block every URL but the console's"
    for scheme in INTERNAL_SCHEMES:
        assert f"{scheme}://*" in block, f"{scheme}:// pages are not blocked by '*' alone"
    assert allow, "nothing allowed: the kiosk would show only an error page"
    for entry in allow:
        m = URL_FILTER.match(entry)
        assert m, f"URLAllowlist entry {entry!r} is not in Chromium's filter format"
        assert m["scheme"] == "http", f"{entry!r}: give the scheme, http (the console has no TLS)"
        assert m["host"] in LOOPBACK_HOSTS, f"{entry!r} is not a loopback host"
        assert m["port"] == str(port), f"{entry!r} is not the console's port {port}"
    for entry in block:
        assert URL_FILTER.match(entry) or entry.endswith(":*"), f"URLBlocklist entry {entry!r}"
    for name, value in KIOSK_LOCKDOWN.items():
        assert policy.get(name) == value, f"{name} must be {value!r}, is {policy.get(name)!r}"


def test_kiosk_policy_names_are_known_to_chromium() -> None:
    """A misspelt policy is silently ignored by Chromium; every name must be one the
    installed browser carries (its policy table holds each name as a C string)."""
    if not CHROMIUM_BINARY.is_file():
        pytest.fail(f"{CHROMIUM_BINARY} not found: install Debian package 'chromium'")
    with CHROMIUM_BINARY.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
        unknown = [name for name in _policy() if image.find(b"\0" + name.encode() + b"\0") < 0]
    assert not unknown, f"not Chromium policies: {unknown}"


def test_kiosk_unit_boots_into_the_console() -> None:
    text = (SYSTEMD_DIR / "station-kiosk.service").read_text()
    settings = _unit_settings(text)
    single = dict(settings)
    values = lambda key: " ".join(v for k, v in settings if k == key).split()  # noqa: E731
    assert single["User"] == "station-kiosk" and single["PAMName"] == "login"
    assert single["TTYPath"] == "/dev/tty1" and "getty@tty1.service" in values("Conflicts")
    assert {"station-console.service", "systemd-user-sessions.service"} <= set(values("After"))
    assert "station-console.service" in values("Wants")
    assert single["Restart"] == "always" and single["WantedBy"] == "graphical.target"
    argv = single["ExecStart"].split()
    assert argv[:3] == ["/usr/bin/cage", "-s", "--"], "cage -s: a field engineer can switch VT"
    assert argv[3] == "/usr/bin/chromium" and {"--kiosk", "--ozone-platform=wayland"} <= set(argv)
    assert "--no-sandbox" not in argv, "Chromium's sandbox stays on"
    profile = next(a.partition("=")[2] for a in argv if a.startswith("--user-data-dir="))
    assert profile.startswith(f"/run/{single['RuntimeDirectory']}/"), "the profile belongs on tmpfs"
    assert single["NoNewPrivileges"] == "yes" and single["CapabilityBoundingSet"] == ""
    assert single["IPAddressAllow"] == "localhost" and single["IPAddressDeny"] == "any"
    assert "station" not in values("SupplementaryGroups")
