"""pytest configuration shared by tests/ and the nbval run of notebooks/."""

import os
import tempfile

# Re-executed notebooks write their figures and results here, not over the committed ones;
# tests/test_results.py then checks what they wrote.
os.environ.setdefault("MBKIT_OUTPUT_ROOT", tempfile.mkdtemp(prefix="mbkit-nbval-"))


def pytest_collectstart(collector):
    # Warnings and progress output on stderr vary between machines; the printed results are compared.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_collection_modifyitems(session, config, items):
    # The checks of re-executed results run after the notebooks that write them.
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_results.py"))
