"""``station``: the umbrella command (``station demo`` runs the whole station end to end)."""
from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: station demo [--applicants N] [--workdir DIR] [--console [--console-port PORT]] [--no-chip]

  demo    run every daemon on emulated devices and enroll N applicants end to end;
          with --console, keep the station running with the web console (station demo --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "demo":
        from station import demo
        return demo.main(args[1:])
    print(f"station: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
