"""A stage's way out: its output printed, one line for a user's error, the right exit status."""

import subprocess
import sys
import textwrap

import pytest

STAGE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from imgpipe.errors import ImgpipeError, run_stage

    def main():
        print("working", end="")  # no newline: still in the buffer when the stage ends
        Path(sys.argv[1]).write_text("done")
        if sys.argv[2] == "fail":
            raise ImgpipeError("params.yaml: train.epochs: must be a whole number >= 1, got 0")

    run_stage(main)
""")


@pytest.mark.parametrize("outcome, status", [("succeed", 0), ("fail", 1)])
def test_a_stage_ends_with_its_output_flushed_and_its_status(tmp_path, outcome, status):
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out.txt"), outcome], capture_output=True, text=True)
    assert done.returncode == status and done.stdout == "working"
    assert (tmp_path / "out.txt").read_text() == "done"
    expected = "error: params.yaml: train.epochs: must be a whole number >= 1, got 0\n" if status else ""
    assert done.stderr == expected
