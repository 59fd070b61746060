"""The project's settings: one TOML file, loaded into typed and validated models.

Everything a user may want to change (tasks, corpus selection, model, UMAP, storage) lives in
``settings.toml``. ``QWEN_ASSETS_SETTINGS`` points at another file. A few environment
variables override single values for machines that differ (paths, the archive), listed in
``ENVIRONMENT_OVERRIDES``.

A bad file fails at load time with one ``SettingsError`` naming every wrong key and what is
allowed there, before any asset runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from qwen_assets.errors import SettingsError

SETTINGS_ENV = "QWEN_ASSETS_SETTINGS"

# Environment variable -> (section, key) it overrides.
ENVIRONMENT_OVERRIDES: dict[str, tuple[str, str]] = {
    "QWEN_ASSETS_DATABASE": ("storage", "database"),
    "QWEN_ASSETS_BUILD_DATABASE": ("storage", "build_database"),
    "QWEN_ASSETS_EMBEDDING_CACHE": ("storage", "embedding_cache"),
    "QWEN_ASSETS_NEWSGROUPS_ARCHIVE": ("corpus", "archive"),
    "QWEN_ASSETS_SITE_DIR": ("site", "output_dir"),
}
# Those that point a project's files (databases, cache, site) somewhere: a project made in a
# folder of its own (a trial, the docs' second corpus) sets them aside. The archive is only read.
FILE_OVERRIDES = tuple(
    v for v, (section, _) in ENVIRONMENT_OVERRIDES.items() if section != "corpus"
)

# The twenty groups of the 20 Newsgroups corpus, in scikit-learn's (alphabetical) order.
NEWSGROUPS: tuple[str, ...] = (
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
)

TASK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")  # tasks and variants, matched whole
SLUG_RULE = "lowercase letter first, then lowercase letters, digits, '-' or '_'; 40 at most"
# The one variant of a project without a [variants] section: [embedding] as it is.
BASE_VARIANT = "base"
UMAP_METRICS = ("euclidean", "cosine", "manhattan", "chebyshev", "correlation")
DEFAULT_TASK = "default"
DEFAULT_MODEL = "Qwen/Qwen3-Embedding-0.6B"
# What a task may aim at (``tasks.<name>.target``): the newsgroup, or a score per post
# (see qwen_assets/pipeline/properties.py).
CATEGORY_PROPERTY = "category"
SCORE_PROPERTIES = ("sentiment", "hostility", "length")
PROPERTIES = (CATEGORY_PROPERTY, *SCORE_PROPERTIES)


def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able data: used for Dagster code and data versions."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# The built-in corpus; any other corpus.source is a file (or a glob) of these kinds.
NEWSGROUPS_SOURCE = "20newsgroups"
CORPUS_FILE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
FILE_COLUMN_KEYS = ("text_column", "label_column", "id_column", "extra_columns")
FILE_KEYS = (*FILE_COLUMN_KEYS, "sample_size")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]


class CorpusSettings(_Section):
    # The built-in 20 Newsgroups, or a Parquet, CSV or JSON-lines file (or a glob of them).
    source: Annotated[str, Field(min_length=1)] = NEWSGROUPS_SOURCE
    # Which column of a file holds the text, the label (unset: no labels) and the id (unset:
    # an id made from the text, so the same text keeps its id as the file grows).
    text_column: Annotated[str, Field(min_length=1)] = "text"
    label_column: Annotated[str, Field(min_length=1)] | None = None
    id_column: Annotated[str, Field(min_length=1)] | None = None
    # More columns of the file to keep beside each post and show in the site (an author, a
    # date, a link): stored as one JSON object per post, never embedded.
    extra_columns: list[Annotated[str, Field(min_length=1)]] = []
    categories: Literal["all"] | list[str] = list(NEWSGROUPS)
    per_category: Literal["all"] | PositiveInt = 80
    # A file corpus: this many posts drawn at random instead of per_category per label.
    sample_size: PositiveInt | None = None
    min_chars: Annotated[int, Field(ge=0)] = 100
    max_chars: PositiveInt = 5000
    random_state: Annotated[int, Field(ge=0)] = 42
    preview_chars: PositiveInt = 200
    archive: str | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value != NEWSGROUPS_SOURCE and not value.lower().endswith(CORPUS_FILE_SUFFIXES):
            raise ValueError(
                f'must be "{NEWSGROUPS_SOURCE}" or a {", ".join(CORPUS_FILE_SUFFIXES)} file '
                f"(or a glob of them, e.g. data/posts/*.parquet); got {value!r}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _file_keeps_every_label(cls, data: Any) -> Any:
        """A file's labels are its own: unless the settings list some, every label is kept."""
        if isinstance(data, dict) and data.get("source", NEWSGROUPS_SOURCE) != NEWSGROUPS_SOURCE:
            return {"categories": "all", **data}
        return data

    @field_validator("per_category", mode="before")
    @classmethod
    def _per_category(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f'must be a whole number above 0, or "all"; got {value!r}')

    @field_validator("categories", mode="before")
    @classmethod
    def _known_categories(cls, value: Any, info: ValidationInfo) -> Any:
        if value == "all":
            return value
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise ValueError('must be a list of newsgroup (or label) names, or "all"')
        if not value:
            raise ValueError('must name at least one newsgroup (or label), or be "all"')
        if len(set(value)) != len(value):
            raise ValueError("lists a name twice")
        if info.data.get("source", NEWSGROUPS_SOURCE) != NEWSGROUPS_SOURCE:
            return value  # a file's labels are checked against the file when it is read
        unknown = [name for name in value if name not in NEWSGROUPS]
        if unknown:
            raise ValueError(
                f"unknown newsgroup {', '.join(map(repr, unknown))}; allowed: {', '.join(NEWSGROUPS)}"
            )
        return value

    @model_validator(mode="after")
    def _extra_columns_are_more(self) -> CorpusSettings:
        named = {self.text_column, self.label_column, self.id_column}
        for column in self.extra_columns:
            if column in named:
                raise ValueError(
                    f"extra_columns: {column!r} is already the text, label or id column; "
                    "list only the other columns to show beside each post"
                )
        if len(set(self.extra_columns)) != len(self.extra_columns):
            raise ValueError("extra_columns: lists a column twice")
        return self

    @model_validator(mode="after")
    def _length_window(self) -> CorpusSettings:
        if self.max_chars <= self.min_chars:
            raise ValueError(
                f"max_chars ({self.max_chars}) must be greater than min_chars ({self.min_chars})"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_sample(self) -> CorpusSettings:
        chosen = self.model_fields_set
        if not self.from_file:
            given = [key for key in FILE_KEYS if key in chosen]
            if given:
                raise ValueError(
                    f"{given[0]}: reads a file; set corpus.source to a Parquet, CSV or "
                    f'JSON-lines file to use it (the built-in "{NEWSGROUPS_SOURCE}" has its own '
                    "columns, and per_category draws from each newsgroup)"
                )
            return self
        if self.sample_size is not None and "per_category" in chosen:
            raise ValueError(
                "sample_size: set sample_size (that many posts at random) or "
                "per_category (that many per label), not both"
            )
        if self.label_column is None:
            if "per_category" in chosen and self.per_category != "all":
                raise ValueError(
                    "per_category: draws per label, and corpus.label_column is unset; "
                    "set label_column, or sample_size for that many posts at random"
                )
            if self.categories != "all":
                raise ValueError(
                    "categories: keeps some labels, and corpus.label_column is unset; "
                    'set label_column, or categories = "all"'
                )
        return self

    @property
    def from_file(self) -> bool:
        return self.source != NEWSGROUPS_SOURCE

    @property
    def labelled(self) -> bool:
        return not self.from_file or self.label_column is not None

    @property
    def category_names(self) -> list[str]:
        """The newsgroups of the built-in corpus (a file's labels are known once it is read)."""
        return list(NEWSGROUPS) if self.categories == "all" else list(self.categories)

    def reading_fingerprint(self) -> str:
        """What changes how a file becomes rows (not its content: that is observed)."""
        if not self.from_file:
            return fingerprint({"loader": 1})
        return fingerprint({"loader": 1, **self.model_dump(include={"source", *FILE_COLUMN_KEYS})})

    def sample_fingerprint(self) -> str:
        """Everything that changes which texts the sample holds (not where the archive lives).
        The file keys count only for a file, so the built-in corpus keeps its version."""
        excluded = {"archive"} if self.from_file else {"archive", "source", *FILE_KEYS}
        return fingerprint(self.model_dump(exclude=excluded))


class HttpSettings(_Section):
    base_url: str = "https://api.siliconflow.com/v1"
    api_key_env: str = "SILICONFLOW_API_KEY"
    max_in_flight: PositiveInt = 8
    requests_per_minute: PositiveInt = 2000
    tokens_per_minute: PositiveInt | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    max_attempts: PositiveInt = 6
    # A server that is behind is waited for while it answers some batch within this long.
    patience_seconds: Annotated[float, Field(ge=0)] = 3600.0
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(
                "must be an http:// or https:// URL, e.g. https://api.siliconflow.com/v1"
            )
        return value.rstrip("/")


# How the in-process model runs: "torch" (its own weights: float32 on a CPU, bfloat16 on a
# GPU), "onnx-int8" (exported once to ONNX with 8-bit weights, run by ONNX Runtime on the CPU:
# faster only on CPUs with int8 dot-product instructions, and vectors that differ slightly, so
# they are cached and versioned apart), or "auto" (int8 where those instructions exist).
LOCAL_RUNTIMES = ("auto", "torch", "onnx-int8")


class LocalSettings(_Section):
    model: str | None = None
    device: str = "auto"
    # Padded tokens per forward pass; "auto": 8,192 on a CPU, on a GPU what its memory holds.
    batch_tokens: Literal["auto"] | Annotated[int, Field(ge=64)] = "auto"
    # At most this many texts per forward pass (unset: as many as batch_tokens allows).
    batch_size: PositiveInt | None = None
    max_seq_length: PositiveInt | None = None
    runtime: Literal[LOCAL_RUNTIMES] = "torch"  # type: ignore[valid-type]
    # Where models exported for runtime "onnx-int8" are kept, so the export is paid once.
    exported_models: Annotated[str, Field(min_length=1)] = "data/models"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", value):
            raise ValueError('must be "auto", "cpu", "mps", "cuda" or "cuda:N"')
        return value

    @model_validator(mode="after")
    def _runtime_on_cpu(self) -> LocalSettings:
        if self.runtime == "onnx-int8" and self.device not in ("auto", "cpu"):
            raise ValueError(
                f'runtime "{self.runtime}" runs on the CPU: set device = "cpu" (or "auto"), '
                'or runtime = "torch" (or "auto") to use the GPU'
            )
        return self


def _check_template(value: str) -> str:
    if "{instruction}" not in value or not value.endswith("{text}"):
        raise ValueError(
            "must contain {instruction} and end with {text}, "
            'e.g. "Instruct: {instruction}\\nQuery:{text}"'
        )
    if value.count("{text}") != 1 or value.count("{instruction}") != 1:
        raise ValueError("must contain {instruction} and {text} once each")
    return value


# Where each text goes in a prompt, and the instruction before it.
PromptTemplate = Annotated[str, AfterValidator(_check_template)]


class EmbeddingSettings(_Section):
    model: str = DEFAULT_MODEL
    dimensions: Annotated[int, Field(ge=32, le=8192)] | None = None
    prompt_template: PromptTemplate = "Instruct: {instruction}\nQuery:{text}"
    backend: Literal["auto", "http", "local"] = "auto"
    batch_size: PositiveInt = 32  # texts per request to an API
    http: HttpSettings = HttpSettings()
    local: LocalSettings = LocalSettings()

    def backend_here(self, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
        """Which backend runs ("http" or "local"), and why (for the log): "auto" takes the
        API when its key is set."""
        variable = self.http.api_key_env
        if self.backend != "auto":
            return self.backend, f'embedding.backend = "{self.backend}"'
        if environ.get(variable):
            return "http", f"embedding.backend is auto and {variable} is set"
        return "local", f"embedding.backend is auto and {variable} is not set"


class VariantHttpSettings(_Section):
    base_url: str | None = None
    api_key_env: str | None = None


class VariantLocalSettings(_Section):
    model: str | None = None
    runtime: Literal[LOCAL_RUNTIMES] | None = None  # type: ignore[valid-type]


class VariantSettings(_Section):
    """One way of embedding the sample, compared with the others: the keys of [embedding]
    that change the vectors (and where they come from); every other key is [embedding]'s."""

    description: str = ""
    model: str | None = None
    prompt_template: PromptTemplate | None = None
    dimensions: Annotated[int, Field(ge=32, le=8192)] | None = None
    backend: Literal["auto", "http", "local"] | None = None
    http: VariantHttpSettings = VariantHttpSettings()
    local: VariantLocalSettings = VariantLocalSettings()

    def applied_to(self, embedding: EmbeddingSettings) -> EmbeddingSettings:
        """``embedding`` with this variant's keys in place of its own, validated as a whole."""
        merged = embedding.model_dump()
        for key, value in self.model_dump(exclude_unset=True, exclude={"description"}).items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
        return EmbeddingSettings.model_validate(merged)


class UmapSettings(_Section):
    n_neighbors: Annotated[int, Field(ge=2)] = 15
    min_dist: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    metric: Literal[UMAP_METRICS] = "euclidean"  # type: ignore[valid-type]
    random_state: Annotated[int, Field(ge=0)] = 42
    align_to: str = DEFAULT_TASK
    # Posts new to a map are placed onto its layout while they are at most this share of
    # it; above, the map is projected again. 0: every change of the sample projects again.
    place_new_up_to: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1

    def layout_fingerprint(self) -> str:
        """What shapes a projection (not when to place instead of projecting)."""
        return fingerprint(self.model_dump(exclude={"place_new_up_to"}))


class SiteSettings(_Section):
    output_dir: str = "site"
    neighbours: Annotated[int, Field(ge=1, le=50)] = 10
    coordinate_decimals: Annotated[int, Field(ge=0, le=8)] = 3
    # Silhouette and trustworthiness cost O(n^2): above this many documents, a fixed sample.
    quality_sample_size: Annotated[int, Field(ge=100)] = 4000
    # SVG points animate between tasks; above this many the explorer draws with WebGL.
    webgl_above: Annotated[int, Field(ge=0)] = 3000
    # Up to this many documents the payload carries every text; above, the texts go to
    # chunk files the page loads on demand, and the payload carries previews.
    inline_texts_up_to: Annotated[int, Field(ge=0)] = 5000
    # A dense group of at least this share of the posts gets a label on the map.
    label_min_share: Annotated[float, Field(gt=0, le=0.5)] = 0.03
    label_words: Annotated[int, Field(ge=1, le=8)] = 3  # words per cluster label


class PublishSettings(_Section):
    """Where the built site is published after every build that changed it: a folder, or a
    branch of a git repository (committed and pushed). Neither set: not published."""

    folder: Annotated[str, Field(min_length=1)] | None = None
    git_repository: Annotated[str, Field(min_length=1)] | None = None
    git_branch: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,100}$")] = "gh-pages"

    @model_validator(mode="after")
    def _one_target(self) -> PublishSettings:
        if self.folder and self.git_repository:
            raise ValueError("set folder or git_repository, not both")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.folder or self.git_repository)


MOTHERDUCK = re.compile(r"^(md|motherduck):")
CONNECTION_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]+:(?!\\)")  # "md:", "s3://"; not "C:\\"
DEFAULT_DATABASE = "data/qwen_assets.duckdb"


def build_database_for(database: str) -> str:
    """Where builds work when ``storage.build_database`` is unset: build/NAME beside the
    database people query, or NAME_build on MotherDuck."""
    if MOTHERDUCK.match(database):
        name, mark, options = database.partition("?")
        return f"{name}_build{mark}{options}"
    path = Path(database)
    return str(path.parent / "build" / path.name)


class AutomationSettings(_Section):
    # How often the rebuild sensor looks for what an edit made stale (Dagster's minimum
    # interval between its ticks).
    sensor_interval_seconds: Annotated[int, Field(ge=1, le=86400)] = 10


class StorageSettings(_Section):
    # What people query: published whole after each complete build, never written in place.
    database: Annotated[str, Field(min_length=1)] = DEFAULT_DATABASE
    # The builds' own database (unset: see build_database_for).
    build_database: Annotated[str, Field(min_length=1)] = build_database_for(DEFAULT_DATABASE)
    # The DuckDB release whose storage format `database` is written in, so that older clients
    # (the DuckDB CLI, notebooks, BI tools bundling DuckDB 1.x) open it.
    readable_by: str = "v1.0.0"
    embedding_cache: Annotated[str, Field(min_length=1)] = "data/embedding_cache.duckdb"
    lock_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @model_validator(mode="before")
    @classmethod
    def _derive_build_database(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not raw.get("build_database"):
            database = raw.get("database") or DEFAULT_DATABASE
            if isinstance(database, str) and (
                MOTHERDUCK.match(database) or not CONNECTION_SCHEME.match(database)
            ):
                return {**raw, "build_database": build_database_for(database)}
        return raw

    @field_validator("readable_by")
    @classmethod
    def _duckdb_release(cls, value: str) -> str:
        if not re.match(r"^(v\d+\.\d+\.\d+|latest)$", value):
            raise ValueError('must be a DuckDB release such as "v1.0.0" or "v1.4.0", or "latest"')
        return value

    @field_validator("database", "build_database", "embedding_cache")
    @classmethod
    def _no_token(cls, value: str) -> str:
        if CONNECTION_SCHEME.match(value) and re.search(r"(?i)token=", value):
            raise ValueError(
                "holds a token: set it in the motherduck_token environment variable instead "
                "(DuckDB reads it there); a token written here would be stored with every run"
            )
        return value

    @field_validator("database", "build_database")
    @classmethod
    def _file_or_motherduck(cls, value: str) -> str:
        if CONNECTION_SCHEME.match(value) and not MOTHERDUCK.match(value):
            raise ValueError(
                "must be a file path or a MotherDuck database (md:NAME); "
                f"got {value.split('?', 1)[0]!r}"
            )
        return value

    @model_validator(mode="after")
    def _two_databases_of_one_kind(self) -> StorageSettings:
        if bool(MOTHERDUCK.match(self.database)) != bool(MOTHERDUCK.match(self.build_database)):
            raise ValueError(
                "database and build_database must both be files or both MotherDuck "
                "databases (md:NAME)"
            )
        if self.build_database == self.database:
            raise ValueError(
                "build_database must differ from database: builds write their own database "
                "and publish it whole to the one people query"
            )
        return self


# An instruction is a sentence or two; a model reads a limited number of tokens, the
# instruction's and the text's together, so a long one would leave the texts no room.
MAX_INSTRUCTION_CHARS = 2000


Instruction = Annotated[str, Field(max_length=MAX_INSTRUCTION_CHARS)]


class TaskSettings(_Section):
    instruction: Instruction = ""
    description: str = ""
    # The property the instruction is about; its figure is compared with the default task's.
    target: Literal[PROPERTIES] | None = None  # type: ignore[valid-type]
    # Other wordings of the instruction: with [controls] on, each is embedded too, and every
    # figure of the task is given with its spread over them.
    paraphrases: list[Instruction] = []

    @field_validator("instruction", "description")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("paraphrases")
    @classmethod
    def _paraphrases(cls, values: list[str]) -> list[str]:
        stripped = [value.strip() for value in values]
        if not all(stripped):
            raise ValueError("a paraphrase is empty; write the instruction in other words")
        if len(set(stripped)) < len(stripped):
            raise ValueError("two paraphrases are the same; each must be its own wording")
        return stripped


# A generic instruction, cut or repeated to the length of the instruction it stands beside.
GENERIC_INSTRUCTION = "Represent the given text so that it can be compared with any other text"


class ControlsSettings(_Section):
    """Prompts that ask whether an instruction's meaning moves the space, or any prefix of
    its length would: its own words shuffled, a generic instruction as long, and its
    paraphrases. Each is one more embedding of the sample per task and variant."""

    # "auto": on when the reference variant embeds through an API, off with the local model
    # (on 2 CPU cores each prompt is another ~25 minutes per task).
    enabled: bool | Literal["auto"] = "auto"
    shuffled: bool = True
    generic: Instruction | None = GENERIC_INSTRUCTION

    @field_validator("generic")
    @classmethod
    def _generic(cls, value: str | None) -> str | None:
        """An empty generic instruction turns that control off, as None does."""
        if value is None:
            return None
        return value.strip() or None


PromptRole = Literal["task", "paraphrase", "shuffled", "generic"]
# What a prompt of another role is named after its task: "topic.shuffled", "topic.paraphrase-1".
# A dot: a task's name cannot hold one, so no task is ever named like a control.
PROMPT_SEPARATOR = "."


@dataclass(frozen=True)
class Prompt:
    """One instruction the sample is embedded with: a task's own, or one of its paraphrases
    or controls. Each is a partition of the embeddings and the maps."""

    name: str
    task: str
    role: PromptRole
    instruction: str


def shuffled_words(instruction: str) -> str:
    """The instruction's words in another order (the same order for the same instruction):
    the same tokens, without the sentence they made."""
    words = instruction.split()
    if len(set(words)) < 2:
        return instruction
    rng = random.Random(fingerprint(instruction))
    shuffled = list(words)
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def generic_of_length(generic: str, words: int) -> str:
    """``generic``'s words, cut or repeated to ``words`` words."""
    source = generic.split()
    return " ".join(source[i % len(source)] for i in range(max(words, 1)))


class Settings(_Section):
    corpus: CorpusSettings = CorpusSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    umap: UmapSettings = UmapSettings()
    site: SiteSettings = SiteSettings()
    publish: PublishSettings = PublishSettings()
    automation: AutomationSettings = AutomationSettings()
    storage: StorageSettings = StorageSettings()
    controls: ControlsSettings = ControlsSettings()
    tasks: dict[str, TaskSettings]
    # Named ways of embedding to compare side by side; the first is the reference. None: one
    # variant, BASE_VARIANT, which is [embedding] as it is.
    variants: dict[str, VariantSettings] = {}
    source: str = Field(default="<memory>", exclude=True)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, tasks: dict[str, TaskSettings]) -> dict[str, TaskSettings]:
        if not tasks:
            raise ValueError("define at least one task, e.g. [tasks.default]")
        problems = []
        for name, task in tasks.items():
            if not TASK_NAME.fullmatch(name):
                problems.append(f"task name {name!r} is not a slug ({SLUG_RULE})")
            elif name != DEFAULT_TASK and not task.instruction:
                problems.append(
                    f"task {name!r} has an empty instruction; only the {DEFAULT_TASK!r} task "
                    "may have none"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return tasks

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: dict[str, VariantSettings]) -> dict[str, VariantSettings]:
        bad = [name for name in variants if not TASK_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"variant name {bad[0]!r} is not a slug ({SLUG_RULE})")
        return variants

    @model_validator(mode="after")
    def _variants_apply(self) -> Settings:
        problems = []
        for name, variant in self.variants.items():
            try:
                variant.applied_to(self.embedding)
            except ValidationError as error:
                problems += [
                    f"variants.{name}.{'.'.join(map(str, p['loc']))}: "
                    + p["msg"].removeprefix("Value error, ")
                    for p in error.errors()
                ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _a_file_for_each(self) -> Settings:
        """Two storage settings naming one file would lose paid work (publishing replaces the
        database people query whole: a cache there is wiped), and a publish folder inside the
        site would copy the site into itself on every publish."""
        stores = {
            "storage.database": self.storage.database,
            "storage.build_database": self.storage.build_database,
            "storage.embedding_cache": self.storage.embedding_cache,
        }
        seen: dict[str, str] = {}
        for key, value in stores.items():
            place = _place(value)
            if place in seen:
                raise ValueError(
                    f"{key}: names the same file as {seen[place]} ({_shown_place(value)}); "
                    "each of storage.database, storage.build_database and "
                    "storage.embedding_cache needs a file of its own"
                )
            seen[place] = key
        if self.publish.folder:
            site, folder = Path(_place(self.site.output_dir)), Path(_place(self.publish.folder))
            if folder == site or site in folder.parents or folder in site.parents:
                raise ValueError(
                    f"publish.folder: {self.publish.folder} and site.output_dir "
                    f"{self.site.output_dir} overlap (one holds the other); a publish copies "
                    "the site into the folder, so name a folder outside the site and not "
                    "around it"
                )
        return self

    @model_validator(mode="after")
    def _alignment_target(self) -> Settings:
        if self.umap.align_to not in self.tasks:
            raise ValueError(
                f"umap.align_to: {self.umap.align_to!r} is not a task; "
                f"allowed: {', '.join(self.tasks)}"
            )
        return self

    @cached_property
    def task_names(self) -> list[str]:
        """The tasks people pick; ``prompt_names`` adds their paraphrases and controls."""
        return list(self.tasks)

    @cached_property
    def controls_on(self) -> bool:
        """Whether paraphrases and controls are embedded; "auto" follows the reference
        variant's backend as ``backend_here`` picks it from this process's environment, the
        one environment every backend choice reads (definitions, cost preview, search)."""
        if self.controls.enabled != "auto":
            return self.controls.enabled
        return self.embedding_of().backend_here()[0] == "http"

    @cached_property
    def prompts(self) -> dict[str, Prompt]:
        """Every instruction the sample is embedded with, by partition name: each task, then
        (with controls on) its paraphrases and controls, so one task's prompts are a range."""
        prompts = {}
        for name, task in self.tasks.items():
            prompts[name] = Prompt(name, name, "task", task.instruction)
            if not (self.controls_on and task.instruction):
                continue
            derived: list[tuple[str, PromptRole, str]] = [
                (f"paraphrase-{number}", "paraphrase", paraphrase)
                for number, paraphrase in enumerate(task.paraphrases, 1)
            ]
            if self.controls.shuffled:
                derived.append(("shuffled", "shuffled", shuffled_words(task.instruction)))
            if self.controls.generic:
                words = len(task.instruction.split())
                derived.append(
                    ("generic", "generic", generic_of_length(self.controls.generic, words))
                )
            for suffix, role, instruction in derived:
                key = f"{name}{PROMPT_SEPARATOR}{suffix}"
                prompts[key] = Prompt(key, name, role, instruction)
        return prompts

    @cached_property
    def prompt_names(self) -> list[str]:
        """The partitions of the embeddings and the maps."""
        return list(self.prompts)

    def instruction_of(self, prompt: str) -> str:
        return self.prompts[prompt].instruction

    @cached_property
    def variant_names(self) -> list[str]:
        return list(self.variants) or [BASE_VARIANT]

    @property
    def reference_variant(self) -> str:
        """The variant the others are aligned to and compared with: the first listed."""
        return self.variant_names[0]

    @cached_property
    def _variant_embeddings(self) -> dict[str, EmbeddingSettings]:
        if not self.variants:
            return {BASE_VARIANT: self.embedding}
        return {name: v.applied_to(self.embedding) for name, v in self.variants.items()}

    def embedding_of(self, variant: str | None = None) -> EmbeddingSettings:
        """[embedding] as ``variant`` (default: the reference) changes it."""
        return self._variant_embeddings[variant or self.reference_variant]

    def check_variant(self, variant: str | None) -> str:
        """``variant``, or the reference when None; one clear error when it is not configured."""
        if variant is None:
            return self.reference_variant
        if variant not in self.variant_names:
            raise SettingsError(
                f"unknown variant {variant!r}; configured variants: {', '.join(self.variant_names)}"
            )
        return variant


def _place(value: str) -> str:
    """Where a path or connection string points: a file's absolute, resolved path (``data/./x``
    and a link to it are ``data/x``), or a connection string without its options."""
    if CONNECTION_SCHEME.match(value):
        return value.split("?", 1)[0]
    return str(Path(value).expanduser().resolve())


def _shown_place(value: str) -> str:
    return value.split("?", 1)[0] if CONNECTION_SCHEME.match(value) else _place(value)


def default_settings_path() -> Path:
    return Path(__file__).with_name("settings.toml")


def settings_path() -> Path:
    configured = os.environ.get(SETTINGS_ENV)
    return Path(configured).expanduser() if configured else default_settings_path()


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load, override from the environment, and validate a settings file."""
    path = Path(path) if path is not None else settings_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = f" (set by {SETTINGS_ENV})" if os.environ.get(SETTINGS_ENV) else ""
        raise SettingsError(f"settings file {path}{hint} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"settings file {path} is not valid TOML: {error}") from None
    for variable, (section, key) in ENVIRONMENT_OVERRIDES.items():
        if os.environ.get(variable):
            raw.setdefault(section, {})[key] = os.environ[variable]
    return parse_settings(raw, source=str(path))


def parse_settings(raw: dict[str, Any], source: str = "<memory>") -> Settings:
    try:
        return Settings.model_validate({**raw, "source": source})
    except ValidationError as error:
        raise SettingsError(_describe(error, source)) from None


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"settings file {source} is invalid:"]
    for problem in error.errors():
        location = [str(part) for part in problem["loc"] if not str(part).startswith("function-")]
        # pydantic names the union branch it tried ("literal['all']", "int"): drop those.
        location = [part for part in location if not re.match(r"^(literal\[|int|str|list\[)", part)]
        message = problem["msg"].removeprefix("Value error, ")
        if re.match(r"^[\w.]+: ", message):  # a rule across keys names the key it blames
            named, message = message.split(": ", 1)
            key = ".".join([*location, named])
        else:
            key = ".".join(location) or "(top level)"
        if problem["type"] == "extra_forbidden":
            message = "unknown key; " + _allowed_keys(problem["loc"][:-1])
        elif problem["type"] == "missing":
            message = "is required"
        lines.append(f"  {key}: {message}")
    # Union types report each branch separately; keep one line per key and message.
    return "\n".join(dict.fromkeys(lines))


def _allowed_keys(parent: tuple[Any, ...]) -> str:
    """The keys a section accepts, for an "unknown key" message."""
    model: type[BaseModel] = Settings
    parts = [str(part) for part in parent]
    while parts:
        part = parts.pop(0)
        if model is Settings and part in ("tasks", "variants"):
            parts = parts[1:]  # the task's or variant's own name
            model = TaskSettings if part == "tasks" else VariantSettings
            continue
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return "allowed: " + ", ".join(name for name in model.model_fields if name != "source")
