# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv, installs the package with the tested dependency versions
# (constraints.txt) and runs. Debian packages they need are installed first.

VENV      ?= .venv
PYTHON    ?= python3
STAMP     := $(VENV)/.installed-stamp
PIP       := $(VENV)/bin/pip
# python3-venv: the venv module; systemd: systemd-analyze for the unit checks; procps: /bin/kill (ExecReload);
# make/gcc/python3-dev for any dependency that builds from source; nats-server: the
# scale-out collector's JetStream tests; iproute2: the uplink benchmark's emulated 4G link;
# fonts: the card artwork (DejaVu for Vietnamese, OCR-B for the MRZ); pcscd, vsmartcard-vpcd,
# pcsc-tools: the chip encoder's PC/SC stack and its virtual reader; libpcsclite-dev, swig:
# to build pyscard; openssl: an independent check of the chip's certificates and EF.SOD;
# chromium (+ libatomic1 for Playwright's driver): the console's browser tests, in Debian's
# browser (nothing is downloaded); cage: the kiosk's compositor, for its unit check.
DEBIAN_PACKAGES := python3-venv python3-dev gcc systemd procps nats-server iproute2 fonts-dejavu-core fonts-ocr-b \
                   pcscd vsmartcard-vpcd pcsc-tools libpcsclite-dev swig openssl chromium libatomic1 cage
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test system-deps bench clean

demo: $(STAMP)
	$(VENV)/bin/station demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

# Every benchmark script; common.py, linkemu.py, filesystems.py and stopwatch.py are pieces they use.
BENCHMARKS := $(filter-out benchmarks/common.py benchmarks/linkemu.py benchmarks/filesystems.py benchmarks/stopwatch.py,$(wildcard benchmarks/*.py))

bench: $(STAMP)
	for script in $(BENCHMARKS); do $(VENV)/bin/python $$script || exit 1; done

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): setup.py constraints.txt
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
