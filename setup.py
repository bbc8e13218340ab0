"""Station: the service inside a biometric enrollment station for chip ID cards."""
from setuptools import setup

setup(
    name="station",
    version="0.1.0",
    description="Biometric enrollment station: device daemons, controller, durable record store",
    python_requires=">=3.11",
    packages=[
        "station",
        "station.defaults",
        "station.collector",
        "drivers",
        "drivers.camera",
        "drivers.fingerprint",
        "drivers.printer",
        "drivers.chip",
    ],
    # The packaged default configuration lives in config/ at the top of the tree (where a
    # field engineer looks for it) and travels inside the wheel as station.defaults.
    package_dir={"station.defaults": "config"},
    package_data={"station.defaults": ["*.yaml"], "station": ["schemas/*.yaml"]},
    install_requires=[
        "pyzmq",
        "pyserial",
        "numpy",
        "opencv-python-headless>=4.8,<5",
        "pyyaml",
        "jsonschema",
        "scikit-image",
        "Pillow",
        "orjson",
        "nbis-py==0.1.3",
        "wsq",
        "cryptography>=50,<51",
        "pycountry",
        "nats-py",
        "segno",
        "asn1crypto",
        "pyscard",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "pyfingerprint",
            "adafruit-circuitpython-fingerprint",
            "nistitl==0.6",
            "hypothesis",
            "mrz",
        ],
    },
    entry_points={
        "console_scripts": [
            "station = station.main:main",
            "stationctl = station.cli:main",
            "station-controller = station.controller:main",
            "station-uplink = station.uplink:main",
            "station-collector = station.collector.main:main",
            "station-camerad = drivers.camera.daemon:main",
            "station-fingerprintd = drivers.fingerprint.daemon:main",
            "station-printerd = drivers.printer.daemon:main",
        ],
    },
)
