import sys
from pathlib import Path

# The repository root is importable without installation (the ComfyUI / WebUI way of loading it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_terminal_summary(terminalreporter):
    from golden_sets import MEASURED

    if MEASURED:
        terminalreporter.write_sep("-", "golden fixtures: max-abs difference per checked tensor")
        for name in sorted(MEASURED):
            terminalreporter.write_line(f"{name:70s} {MEASURED[name]:.3g}")
