"""lib.devicecheck: chapters as plain scripts (no Jupyter, no IPython), and its no-CUDA exit."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib import devicecheck

CHAPTER = """# A chapter

```{code-cell} ipython3
:tags: [parameters]
scale = None
n = 2
```

Prose.

```{code-cell} ipython3
---
mystnb:
  figure:
    caption: A caption.
---
%matplotlib inline
from IPython.display import Markdown
text = f"{scale} {n * 21}"
Markdown(text)
print(text)
```
"""


def test_chapter_script_injects_parameters_after_the_parameters_cell(tmp_path):
    ch = tmp_path / "ch.md"
    ch.write_text(CHAPTER)
    script = devicecheck.chapter_script(ch, {"scale": "smoke"})
    assert "mystnb" not in script and ":tags:" not in script and "%matplotlib" not in script
    assert script.index("n = 2") < script.index("scale = 'smoke'") < script.index("Markdown(text)")
    res = devicecheck.run_chapter(ch, {"scale": "smoke"})
    assert res["ok"], res["error"]
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "smoke 42"


def test_chapter_script_refuses_magics_and_missing_parameters_cell(tmp_path):
    ch = tmp_path / "ch.md"
    ch.write_text("```{code-cell} ipython3\n!ls\n```\n")
    with pytest.raises(ValueError, match="magic"):
        devicecheck.chapter_script(ch)
    ch.write_text("```{code-cell} ipython3\nx = 1\n```\n")
    with pytest.raises(ValueError, match="parameters"):
        devicecheck.chapter_script(ch, {"scale": "smoke"})
    ch.write_text("no cells\n")
    with pytest.raises(ValueError, match="no code cells"):
        devicecheck.chapter_script(ch)


def test_failing_chapter_is_reported(tmp_path):
    ch = tmp_path / "ch.md"
    ch.write_text("```{code-cell} ipython3\nassert 1 == 2, 'planted failure'\n```\n")
    res = devicecheck.run_chapter(ch)
    assert not res["ok"] and "planted failure" in res["error"]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert devicecheck.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA" in out[0]


def test_chapter_files_are_the_notebooks_and_skip_reference_pages():
    names = [p.name for p in devicecheck.chapter_files(Path(__file__).parents[1] / "book")]
    assert names[0] == "00_intro.md" and "09_results.md" in names
    # The API reference and the bibliography are plain pages: nothing to execute, no parameters.
    assert "10_api.md" not in names and "11_references.md" not in names
