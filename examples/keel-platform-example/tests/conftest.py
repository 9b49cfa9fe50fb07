"""Import the example from its source folder, without installing it into the test venv.

The real-install path is covered by the virtualenv test in test_example_plugin.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
