"""The published site: the data payload and the static pages around it.

The payload is columnar JSON (schema below, versioned by ``SCHEMA_VERSION``): every text
once, coordinates rounded to what a screen can show, neighbour lists as indices into the
document columns. ``data.json`` is the whole payload, for any consumer. The pages load it as
scripts instead, because browsers refuse ``fetch()`` of files opened from disk while a
``<script src>`` loads from disk and from any host. ``data.js`` (``window.QWEN_SITE_DATA``)
is what a map needs to draw: the payload without the neighbour lists and the texts or
previews. ``details.js`` (``window.QWEN_SITE_DETAILS``: {"tasks": {name: {"neighbours",
"similarity"}}, "documents": {"text" or "preview": [...], "extra"}}) holds those, most of the
payload, and the pages load it after the first draw.

Schema, version 2 (1 had no variants)::

    {"schema": "qwen-assets/site-data", "version": 2, "model": str, "prompt_template": str,
     "reference_task": str, "neighbours": k, "render": {"webgl_above": int},
     "variants": [{"name", "description", "model", "prompt_template", "dimensions"}],
     "reference_variant": str,                  # the variant every map is aligned onto
     "categories": [str],                       # legend order
     "categories_from": null | str,   # a corpus without labels: the map whose clusters they are
     "unclustered": null | str,       # then the category of the posts in no cluster
     "documents": {"id": [str], "category": [int],
                   "text": [str]                  # when the texts are inline, or else
                   "preview": [str]},             # previews, with the texts in chunks:
     "texts": null | {"chunk_size": int, "chunks": int},  # texts/0000.json (and .js), ...
     "preview_chars": int,                      # a preview is the text's first characters
     "tasks": [{"name", "variant", "instruction", "description",   # one per variant x task
                "x": [float], "y": [float],        # aligned onto the reference map
                "neighbours": [[int] * k],         # per document, most similar first
                "similarity": [[float] * k],
                "quality": {"knn_accuracy", "silhouette", "trustworthiness",
                            "overlap_with_reference", "documents_scored",
                            "probe_accuracy" (null: a group too small), "v_measure",
                            "cka_with_reference",
                            "overlap_with_reference_variant",
                            "predicts_<property>", "predicts_<property>_map"},
                "target": null | str,                # the property the task aims at
                "headline": null | str,    # its figure against its variant's default task
                "placed": {str(index): str},  # posts placed onto the layout after it was made
                                              # (new to the corpus), and when (UTC)
                "clusters": {"member": [int],        # per document, -1 for none
                             "labels": [{"number": int, "label": str, "size": int,
                                         "x": float, "y": float}]}}],
     "documents": {..., "properties": {"sentiment": [float], "hostility": [float],
                                       "length": [int]},
                   "extra": {column: [str | null]}}}  # corpus.extra_columns, when set
"""

from __future__ import annotations

import glob
import hashlib
import html
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qwen_assets.errors import SiteError
from qwen_assets.pipeline.clusters import MapClusters, cluster_map, min_cluster_size
from qwen_assets.pipeline.metrics import (
    Headline,
    chance_difference,
    map_neighbours,
    nearest_neighbours,
    neighbourhood_overlap,
    probe_rank_correlation,
    property_agreement,
    sample_rows,
    task_quality,
)
from qwen_assets.settings import BASE_VARIANT, DEFAULT_TASK, Settings

SCHEMA = "qwen-assets/site-data"
# The category of a post in no cluster, where a corpus without labels is coloured by cluster.
UNCLUSTERED = "(no cluster)"
PUBLISHED_MODE = 0o644  # readable by the web server, whoever it runs as
SCHEMA_VERSION = 2
PAYLOAD_GLOBAL = "QWEN_SITE_DATA"
DETAILS_GLOBAL = "QWEN_SITE_DETAILS"
DETAILS_FILE = "details.js"
DETAIL_TASK_FIELDS = ("neighbours", "similarity")
DETAIL_DOCUMENT_FIELDS = ("text", "preview", "extra")
TEXTS_GLOBAL = "QWEN_SITE_TEXTS"
TEXT_CHUNK_SIZE = 1000
TASK_PAGE_TEMPLATE = "task.template.html"
# plotly.js's partial bundles, from the plotly.js package on npm (dist/): "basic" draws with
# SVG; "gl2d" adds scattergl (WebGL), and loads in a quarter of the full bundle's time.
BASIC_BUNDLE = "vendor/plotly-basic.min.js"
GL2D_BUNDLE = "vendor/plotly-gl2d.min.js"
# The hand-written sources, committed next to what the site assets generate.
SOURCE_FILES = ("index.html", "compare.html", TASK_PAGE_TEMPLATE, "assets")
# Part of the sources' fingerprint, copied only as the page's plotly.js when it is chosen.
VENDORED_FILES = (BASIC_BUNDLE, GL2D_BUNDLE)


@dataclass(frozen=True)
class TaskMap:
    """One map's share of the payload: a task, as one variant embeds it."""

    name: str
    instruction: str
    description: str
    coordinates: np.ndarray  # (n, 2), aligned onto the reference task
    neighbours: np.ndarray  # (n, k) indices
    similarity: np.ndarray  # (n, k)
    quality: Mapping[str, float | int]
    target: str | None = None
    headline: Headline | None = None
    clusters: MapClusters | None = None
    variant: str = BASE_VARIANT
    # Posts placed onto the layout after it was made: str(index) -> when (UTC).
    placed: Mapping[str, str] = field(default_factory=dict)
    # A task's own map ("task"), or one of its paraphrases or controls: those are figures
    # for the task's card, not maps people pick (see qwen_assets/pipeline/controls.py).
    role: str = "task"
    of_task: str = ""

    @property
    def picked(self) -> bool:
        return self.role == "task"


def task_maps(
    settings: Settings,
    categories: Sequence[str] | None,
    vectors: Mapping[str, np.ndarray],
    layouts: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray] | None = None,
    texts: Sequence[str] | None = None,
    variant: str = BASE_VARIANT,
) -> list[TaskMap]:
    """Each prompt's share of the payload, as ``variant`` embeds it (``vectors``' keys: tasks,
    and their paraphrases and controls): its aligned layout, its top-k neighbours by
    full-dimension cosine, and its quality figures: how its neighbourhoods, in full
    dimension and on the map, agree on each property (``scores``: per-document values by
    property name), what a linear probe gets of each, and for a task with a target, that
    figure against the default task's. With ``texts``, each task's labelled clusters too.
    Rows are documents, in one order. ``categories`` None: a corpus without labels (the
    figures about them are None)."""
    site = settings.site
    label_size = min_cluster_size(len(layouts[settings.umap.align_to]), site.label_min_share)
    labels = (
        None if categories is None else np.unique(np.asarray(categories), return_inverse=True)[1]
    )
    scores = dict(scores or {})
    neighbours = {name: nearest_neighbours(vectors[name], site.neighbours) for name in vectors}
    reference = neighbours[settings.umap.align_to][0]
    sampled = sample_rows(len(reference), site.quality_sample_size)  # as task_quality samples
    agreement = {
        name: {
            **{
                f"predicts_{prop}": round(value, 4)
                for prop, value in property_agreement(neighbours[name][0], labels, scores).items()
            },
            **{
                f"predicts_{prop}_map": round(value, 4)
                for prop, value in property_agreement(
                    map_neighbours(layouts[name], site.neighbours), labels, scores
                ).items()
            },
            **{
                f"probe_{prop}": round(
                    probe_rank_correlation(vectors[name][sampled], np.asarray(values)[sampled]),
                    4,
                )
                for prop, values in scores.items()
            },
        }
        for name in vectors
    }
    maps = []
    for name in vectors:
        prompt = settings.prompts[name]
        task = settings.tasks[prompt.task]
        picked = prompt.role == "task"
        maps.append(
            TaskMap(
                name=name,
                instruction=prompt.instruction,
                description=task.description,
                coordinates=layouts[name],
                neighbours=neighbours[name][0],
                similarity=neighbours[name][1],
                quality={
                    **task_quality(
                        vectors[name],
                        layouts[name],
                        labels,
                        neighbours[name][0],
                        reference,
                        vectors[settings.umap.align_to],
                        sample_size=site.quality_sample_size,
                    ).rounded(),
                    **agreement[name],
                },
                target=task.target,
                headline=_headline(name, settings, agreement, neighbours, labels, scores)
                if picked
                else None,
                clusters=cluster_map(
                    layouts[name], texts, min_size=label_size, words=site.label_words
                )
                if texts is not None and picked
                else None,
                variant=variant,
                role=prompt.role,
                of_task=prompt.task,
            )
        )
    return maps


def compared_with_reference_variant(maps: Sequence[TaskMap], reference: str) -> list[TaskMap]:
    """Each map with ``overlap_with_reference_variant``: the mean Jaccard overlap of its
    neighbourhoods with those of the same task in the ``reference`` variant (1 for itself)."""
    theirs = {m.name: m.neighbours for m in maps if m.variant == reference}

    def overlap(m: TaskMap) -> float:
        if m.variant == reference:
            return 1.0
        return round(float(neighbourhood_overlap(m.neighbours, theirs[m.name]).mean()), 4)

    return [
        replace(m, quality={**m.quality, "overlap_with_reference_variant": overlap(m)})
        for m in maps
    ]


def _headline(
    task: str,
    settings: Settings,
    agreement: Mapping[str, Mapping[str, float]],
    neighbours: Mapping[str, tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray | None,
    scores: Mapping[str, np.ndarray],
) -> Headline | None:
    target = settings.tasks[task].target
    figure = f"predicts_{target}"
    if target is None or task == DEFAULT_TASK or DEFAULT_TASK not in agreement:
        return None
    if figure not in agreement[task]:
        return None
    chance = chance_difference(
        neighbours[task][0],
        neighbours[DEFAULT_TASK][0],
        labels if target == "category" else np.asarray(scores[target]),
        category=target == "category",
    )
    return Headline(
        task,
        target,
        agreement[task][figure],
        DEFAULT_TASK,
        agreement[DEFAULT_TASK][figure],
        round(chance, 4),
    )


def build_payload(
    *,
    doc_ids: Sequence[str],
    categories: Sequence[str],
    texts: Sequence[str],
    previews: Sequence[str],
    tasks: Sequence[TaskMap],
    variants: Sequence[Mapping[str, object]],
    reference_task: str,
    coordinate_decimals: int,
    webgl_above: int,
    preview_chars: int,
    inline_texts: bool,
    properties: Mapping[str, Sequence[float]] | None = None,
    categories_from: str | None = None,
    controls: Mapping[str, Mapping] | None = None,
    extras: Mapping[str, Sequence[str | None]] | None = None,
) -> dict:
    """The payload. ``variants``: each variant's name, description, model, prompt_template
    and dimensions, the reference first. With ``inline_texts`` every text is in it (and
    previews are cut from them in the page); otherwise it carries previews, and
    ``text_chunks`` the texts (``write_payload`` writes them). ``categories_from``: where
    the categories come from when the corpus has no labels (a map's clusters). ``controls``:
    by ``variant/task``, the task's paraphrases and controls and its figures beside theirs.
    ``extras``: a file corpus's extra columns, by name, a value (or None) per document."""
    legend = sorted(set(categories))
    index = {name: position for position, name in enumerate(legend)}
    documents: dict[str, list] = {
        "id": list(doc_ids),
        "category": [index[name] for name in categories],
    }
    if inline_texts:
        documents["text"] = list(texts)
    else:
        documents["preview"] = list(previews)
    if extras:
        documents["extra"] = {name: list(values) for name, values in extras.items()}
    documents["properties"] = {
        name: _rounded(np.asarray(values, dtype=float), 0 if name == "length" else 3)
        for name, values in (properties or {}).items()
    }
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "model": variants[0]["model"],  # the reference variant's, as in schema 1
        "prompt_template": variants[0]["prompt_template"],
        "reference_task": reference_task,
        "variants": [dict(variant) for variant in variants],
        "reference_variant": variants[0]["name"],
        "neighbours": int(tasks[0].neighbours.shape[1]) if tasks else 0,
        "render": {"webgl_above": webgl_above},
        "categories": legend,
        "categories_from": categories_from,
        "unclustered": UNCLUSTERED if categories_from else None,
        "documents": documents,
        "texts": None
        if inline_texts
        else {"chunk_size": TEXT_CHUNK_SIZE, "chunks": -(-len(texts) // TEXT_CHUNK_SIZE)},
        "preview_chars": preview_chars,
        "tasks": [
            {
                "name": task.name,
                "variant": task.variant,
                "instruction": task.instruction,
                "description": task.description,
                "x": _rounded(task.coordinates[:, 0], coordinate_decimals),
                "y": _rounded(task.coordinates[:, 1], coordinate_decimals),
                "neighbours": task.neighbours.astype(int).tolist(),
                "similarity": np.round(task.similarity.astype(float), 3).tolist(),
                "quality": dict(task.quality),
                "target": task.target,
                "headline": task.headline.sentence() if task.headline else None,
                "clusters": _clusters(task.clusters, coordinate_decimals),
                "placed": dict(task.placed),
                "controls": (controls or {}).get(f"{task.variant}/{task.name}"),
            }
            for task in tasks
        ],
    }


def _clusters(found: MapClusters | None, decimals: int) -> dict:
    if found is None:
        return {"member": [], "labels": []}
    return {
        "member": found.membership.astype(int).tolist(),
        "labels": [
            {
                "number": cluster.number,
                "label": cluster.label,
                "size": cluster.size,
                "x": round(cluster.x, decimals),
                "y": round(cluster.y, decimals),
            }
            for cluster in found.clusters
        ],
    }


def _rounded(values: np.ndarray, decimals: int) -> list[float]:
    return np.round(values.astype(float), decimals).tolist()


def encode_payload(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def script_form(encoded: bytes, assignment: str = f"window.{PAYLOAD_GLOBAL}") -> bytes:
    """JSON as a classic script, which loads from disk where ``fetch()`` may not. ``</`` is
    escaped so that no text can close a ``<script>`` element early."""
    body = encoded.replace(b"</", b"<\\/")
    return assignment.encode() + b" = " + body + b";\n"


def text_chunks(texts: Sequence[str], size: int = TEXT_CHUNK_SIZE) -> list[list[str]]:
    return [list(texts[start : start + size]) for start in range(0, len(texts), size)]


def text_chunk_name(number: int) -> str:
    return f"texts/{number:04d}"


# Marks a folder as one this project writes into: the site's folder, a publish folder.
OWNED_MARKER = ".qwen-assets-site"
STAGED_MARK = ".qwen-staged-"  # a new file beside the one it replaces, until swapped in


def folder_refusal(folder: Path, setting: str) -> str | None:
    """Why this project must not write into ``folder``, or None. It writes only into a
    folder it made, an empty one, or a site an earlier release built there (its data.json
    says so): anything else holds someone's files, which a build would overwrite or delete."""
    if (folder / OWNED_MARKER).is_file():
        return None
    if folder.exists() and not folder.is_dir():
        return f"{setting} points at {folder}, which is a file; name a folder (new or empty)"
    entries = sorted(path.name for path in folder.iterdir()) if folder.exists() else []
    if entries and not _an_earlier_site(folder):
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        return (
            f"{setting} points at {folder}, which holds files this project did not write "
            f"({', '.join(entries[:3])}{more}); name a new or empty folder: the site's files "
            "there are replaced on every build"
        )
    return None


def claim_folder(folder: Path, setting: str) -> None:
    """Mark ``folder`` as this project's, or refuse it (see ``folder_refusal``)."""
    refusal = folder_refusal(folder, setting)
    if refusal is not None:
        raise SiteError(refusal)
    if not (folder / OWNED_MARKER).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OWNED_MARKER).write_text("written by qwen-assets; its files are replaced\n")


def _an_earlier_site(folder: Path) -> bool:
    try:
        return read_payload(folder).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def staged_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{STAGED_MARK}{uuid.uuid4().hex[:8]}")


def write_atomically(path: Path, content: bytes) -> None:
    """Readers (and a static host mid-upload) see the old file or the new one, never half."""
    staged = StagedFiles()
    staged.write(path, content)
    staged.swap()


@dataclass
class StagedFiles:
    """New files written beside the ones they replace and swapped in together (``swap``), or
    removed (``discard``), so a folder's files change together with the tables that describe
    them. Files a build killed half way left staged are cleared by the next one."""

    pending: dict[Path, Path] = field(default_factory=dict)  # final name -> staged file
    obsolete: set[Path] = field(default_factory=set)  # removed by the swap

    def write(self, path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f".{glob.escape(path.name)}{STAGED_MARK}*"):
            if leftover not in self.pending.values():
                leftover.unlink(missing_ok=True)
        staged = staged_name(path)
        try:
            with staged.open("wb") as file:
                file.write(content)
            staged.chmod(PUBLISHED_MODE)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        self.pending[path] = staged

    def swap(self) -> None:
        for path, staged in self.pending.items():
            os.replace(staged, path)
        for path in self.obsolete - set(self.pending):
            path.unlink(missing_ok=True)
        self.pending.clear()

    def discard(self) -> None:
        for staged in self.pending.values():
            staged.unlink(missing_ok=True)
        self.pending.clear()


@dataclass(frozen=True)
class WrittenPayload:
    json_path: Path
    sha256: str
    bytes: int


def stage_payload(
    payload: dict, output_dir: Path, texts: Sequence[str] | None = None
) -> tuple[StagedFiles, WrittenPayload]:
    """The payload's files (and the texts in chunks when the payload does not carry them),
    written beside the current ones; swapping them in removes chunks of an earlier, larger
    build."""
    claim_folder(output_dir, "site.output_dir")
    encoded = encode_payload(payload)
    staged = StagedFiles()
    try:
        if payload["texts"] is not None:
            if texts is None:
                raise ValueError("the payload's texts are chunked: pass them to stage_payload")
            for number, chunk in enumerate(text_chunks(texts, payload["texts"]["chunk_size"])):
                name = output_dir / text_chunk_name(number)
                chunk_encoded = encode_payload(chunk)
                staged.write(name.with_suffix(".json"), chunk_encoded)
                staged.write(
                    name.with_suffix(".js"),
                    script_form(chunk_encoded, f"{TEXTS_GLOBAL}[{number}]"),
                )
        chunks = output_dir / "texts"
        if chunks.is_dir():
            staged.obsolete |= {
                path for path in chunks.glob("*.js*") if STAGED_MARK not in path.name
            }
        json_path, script_path = output_dir / "data.json", output_dir / "data.js"
        drawing, details = split_details(payload)
        staged.write(
            output_dir / DETAILS_FILE,
            script_form(encode_payload(details), f"window.{DETAILS_GLOBAL}"),
        )
        staged.write(json_path, encoded)
        staged.write(script_path, script_form(encode_payload(drawing)))
    except BaseException:
        staged.discard()
        raise
    return staged, WrittenPayload(json_path, hashlib.sha256(encoded).hexdigest(), len(encoded))


def write_payload(
    payload: dict, output_dir: Path, texts: Sequence[str] | None = None
) -> WrittenPayload:
    """The payload's files, written and swapped in at once (see ``stage_payload``)."""
    staged, written = stage_payload(payload, output_dir, texts)
    staged.swap()
    return written


def split_details(payload: dict) -> tuple[dict, dict]:
    """(what a map needs to draw, the rest: neighbour lists and texts or previews)."""
    documents = payload["documents"]
    drawing = {
        **payload,
        "documents": {k: v for k, v in documents.items() if k not in DETAIL_DOCUMENT_FIELDS},
        "tasks": [
            {k: v for k, v in task.items() if k not in DETAIL_TASK_FIELDS}
            for task in payload["tasks"]
        ],
    }
    details = {
        "tasks": {
            f"{task['variant']}/{task['name']}": {
                k: task[k] for k in DETAIL_TASK_FIELDS if k in task
            }
            for task in payload["tasks"]
        },
        "documents": {k: documents[k] for k in DETAIL_DOCUMENT_FIELDS if k in documents},
    }
    return drawing, details


def read_payload(output_dir: Path) -> dict:
    return json.loads((output_dir / "data.json").read_text(encoding="utf-8"))


def sources_dir() -> Path:
    """The hand-written site sources, shipped inside the package (``site_sources/``), so any
    install builds the pages from any working directory."""
    return Path(__file__).resolve().with_name("site_sources")


def sources_fingerprint(sources: Path) -> str:
    """Changes when any hand-written source changes, so the pages go stale with them."""
    digest = hashlib.sha256()
    for path in sorted([*_source_paths(sources), *(sources / name for name in VENDORED_FILES)]):
        digest.update(str(path.relative_to(sources)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _source_paths(sources: Path) -> list[Path]:
    paths = []
    for name in SOURCE_FILES:
        path = sources / name
        paths += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [path for path in paths if path.exists()]


def plotly_bundle(webgl: bool = True) -> Path:
    """plotly.js, never from a CDN: the smallest bundle that draws the site. A site drawn with
    WebGL gets the "gl2d" bundle (scatter and scattergl, 1.5 MB: at 100,000 posts it is ready
    in 0.3 s where the full bundle took 1.4 s of the first draw's 2.2 s); a smaller one the
    "basic" bundle (scatter, bar, pie: 1.2 MB). Both are one plotly.js version, shipped in
    ``site_sources/vendor/``."""
    return sources_dir() / (GL2D_BUNDLE if webgl else BASIC_BUNDLE)


def task_page_name(task: str) -> str:
    return f"task-{task}.html"


def write_pages(
    output_dir: Path, tasks: Sequence[str], sources: Path | None = None, webgl: bool = True
) -> list[Path]:
    """Copy the sources and plotly.js (``webgl``: the bundle that can draw with WebGL) into
    ``output_dir`` and write one page per task.

    Pages of tasks no longer configured are removed. Returns the files written.
    """
    sources = sources or sources_dir()
    missing = [name for name in SOURCE_FILES if not (sources / name).exists()]
    if missing:
        raise SiteError(
            f"the site sources {', '.join(missing)} are missing from {sources}; "
            "reinstall qwen_assets"
        )
    claim_folder(output_dir, "site.output_dir")
    written: list[Path] = []
    same_folder = output_dir.resolve() == sources.resolve()
    for source in _source_paths(sources):
        if source.name == TASK_PAGE_TEMPLATE:
            continue
        target = output_dir / source.relative_to(sources)
        if not same_folder:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        written.append(target)
    vendor = output_dir / "vendor" / "plotly.min.js"
    vendor.parent.mkdir(exist_ok=True)
    shutil.copyfile(plotly_bundle(webgl), vendor)
    written.append(vendor)
    template = (sources / TASK_PAGE_TEMPLATE).read_text(encoding="utf-8")
    for old in output_dir.glob(task_page_name("*")):
        if old.name not in {task_page_name(task) for task in tasks}:
            old.unlink()
    for task in tasks:
        page = output_dir / task_page_name(task)
        write_atomically(page, template.replace("{{task}}", html.escape(task)).encode("utf-8"))
        written.append(page)
    return written
