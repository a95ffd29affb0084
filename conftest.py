"""pytest configuration shared by tests/ and the nbval run of notebooks/."""

import os
import tempfile

# Re-executed notebooks write their figures and results here, not over the committed ones.
os.environ.setdefault("MBKIT_OUTPUT_ROOT", tempfile.mkdtemp(prefix="mbkit-nbval-"))


def pytest_collectstart(collector):
    # Warnings and progress output on stderr vary between machines; the printed results are compared.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
