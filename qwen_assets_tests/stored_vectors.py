"""The loopback server's vectors, kept between test sessions.

The suite's builds send the same few thousand texts through the loopback server every run;
encoding them is most of what the real-sample build costs. Each vector the model makes is
kept under pytest's cache folder, keyed by what decides it (the model's weights, the torch
version, the maximum length) and by the text's hash, so a later session answers it without
the model. Every session re-encodes a sample of the answers it took from the store (in one
of its processes) and fails if the model no longer agrees: a stale store cannot pass.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# How many stored answers each session checks against the model, and how close they must be
# (the same model on the same text differs only by float rounding across batch shapes).
SPOT_CHECKS = 16
TOLERANCE = 1e-4


def store_key(model_folder: str, torch_version: str, max_length: int) -> str:
    """A name for what decides a vector besides its text."""
    digest = hashlib.sha256(f"{torch_version}\0{max_length}\0".encode())
    for path in sorted(Path(model_folder).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(model_folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class StoredVectors:
    """``texts -> vectors`` through ``encode``, answering texts seen before (in this session or
    a stored one) from memory. ``folder`` None: nothing is stored between sessions."""

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        folder: Path | None,
        spot_checks: int = SPOT_CHECKS,
    ) -> None:
        self.encode = encode
        self.spot_checks = spot_checks
        self.folder = folder
        self.lock = threading.Lock()
        self.known: dict[str, np.ndarray] = {}
        self.loaded: list[Path] = []
        self.checked = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for path in sorted(folder.glob("*.npz")):
                try:
                    with np.load(path) as stored:
                        keys, vectors = stored["keys"], stored["vectors"]
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                    self.loaded.append(path)  # damaged: the next save replaces it
                    continue
                self.known.update(zip((str(key) for key in keys), vectors, strict=True))
                self.loaded.append(path)
        self.stored = frozenset(self.known)
        self.from_store = set(self.stored)  # stored answers not yet checked against the model

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [_text_key(text) for text in texts]
        with self.lock:
            new = {
                key: text for key, text in zip(keys, texts, strict=True) if key not in self.known
            }
            unchecked = (
                [
                    (key, text)
                    for key, text in dict(zip(keys, texts, strict=True)).items()
                    if key in self.from_store
                ]
                if self.checked < self.spot_checks
                else []
            )
        if unchecked:
            wanted = min(len(unchecked), self.spot_checks - self.checked)
            self._check(random.sample(unchecked, wanted))
        if new:
            vectors = self.encode(list(new.values()))
            with self.lock:  # the first answer stands: a text keeps one vector all session
                for key, vector in zip(new, vectors, strict=True):
                    self.known.setdefault(key, vector)
        with self.lock:
            return np.stack([self.known[key] for key in keys])

    def _check(self, sample: list[tuple[str, str]]) -> None:
        fresh = self.encode([text for _, text in sample])
        with self.lock:
            for (key, text), vector in zip(sample, fresh, strict=True):
                self.from_store.discard(key)
                if not np.allclose(self.known[key], vector, atol=TOLERANCE):
                    raise AssertionError(
                        f"the stored vector of {text[:60]!r} is not the model's: delete "
                        f"{self.folder} (pytest --cache-clear) and run again"
                    )
            self.checked += len(sample)

    def save(self) -> None:
        """Everything known, in one new file (written whole, then renamed), in place of the
        files this session read; another session's files are left to it."""
        if self.folder is None or len(self.known) == len(self.stored):
            return
        keys = list(self.known)
        partial = self.folder / f"{uuid.uuid4().hex}.partial"
        with partial.open("wb") as out:
            np.savez(
                out,
                keys=np.array(keys),
                vectors=np.stack([self.known[key] for key in keys]).astype(np.float32),
            )
        os.replace(partial, self.folder / f"{uuid.uuid4().hex}.npz")
        for path in self.loaded:
            path.unlink(missing_ok=True)
