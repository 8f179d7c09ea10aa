# SPDX-License-Identifier: Apache-2.0
"""Run qsmflow as ``python -m qsmflow``."""
from qsmflow.cli import main

if __name__ == '__main__':
    raise SystemExit(main())
