"""Notebook mechanics of the report: cells into an nbformat notebook, executed in a fresh kernel, its jupytext `.py`
twin and a self-contained HTML page.

What the cells say is decided elsewhere (`report` renders them from `templates/report/`); this module only knows
how a notebook is built, run and converted, so the same mechanics serve any generated notebook.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

import nbformat
from nbformat import v4

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNEL_NAME = "python3"


def new_notebook(cells: Iterable[tuple[str, str]]) -> nbformat.NotebookNode:
    """A Python 3 notebook of ('markdown' | 'code', source) cells, unexecuted."""
    make = {"markdown": v4.new_markdown_cell, "code": v4.new_code_cell}
    nb = v4.new_notebook(cells=[make[kind](source.rstrip("\n")) for kind, source in cells])
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this checkout importable even when not pip-installed, headless, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugger warning on kernel start
    return env


def execute_notebook(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell in a fresh `python3` kernel with cwd = `cwd` (nbclient), outputs in place."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        raise UserError(f"no Jupyter kernel named {KERNEL_NAME!r} for {sys.executable}; install one with "
                        f"`{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL_NAME}` (make setup "
                        "does this), or use --no-execute") from None
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=kernel_env())
    return nb


def write_html(nb: nbformat.NotebookNode, path: Path) -> Path:
    """One HTML file: figures are image outputs, embedded as base64, so it opens anywhere without Jupyter."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    # JupyterLab's look without its CDN scripts (require.js, MathJax): the report uses neither, and without them
    # the page has no external reference at all.
    template = ("{%- extends 'lab/index.html.j2' -%}\n{% block html_head_js %}{% endblock %}\n"
                "{% block html_head_js_mathjax %}{% endblock %}\n")
    exporter = HTMLExporter(embed_images=True, extra_loaders=[DictLoader({"report.html.j2": template})],
                            template_file="report.html.j2")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"{path.parent.resolve().name}: report"}})
    path.write_text(body, encoding="utf-8")
    return path


def write_notebook(nb: nbformat.NotebookNode, folder: Path, name: str, execute: bool = True,
                   html: bool = True) -> dict[str, Path]:
    """FOLDER/NAME.ipynb (executed in FOLDER unless execute=False), its jupytext percent twin FOLDER/NAME.py and, if
    html, FOLDER/NAME.html (figures and tables are cell outputs, so only an executed notebook shows them)."""
    import jupytext

    paths = {"ipynb": folder / f"{name}.ipynb", "py": folder / f"{name}.py"}
    jupytext.write(nb, paths["py"], fmt="py:percent")
    nbformat.write(nb, paths["ipynb"])
    if execute:
        try:
            execute_notebook(nb, folder.resolve())
        finally:  # keep what ran (with the error output, if any) for inspection
            nbformat.write(nb, paths["ipynb"])
    if html:
        paths["html"] = write_html(nb, folder / f"{name}.html")
    return paths
