"""The settings file: defaults reproduce the published demo; bad files fail clearly at load."""

from pathlib import Path

import pytest

from qwen_assets.pipeline.embedding.identity import prompt_prefix, task_version
from qwen_assets.settings import NEWSGROUPS, SettingsError, load_settings, parse_settings
from qwen_assets.testing import settings_dict, write_settings


def test_defaults_reproduce_the_published_demo():
    settings = load_settings()
    assert settings.task_names == ["default", "topic", "sentiment", "toxicity"]
    assert settings.tasks["default"].instruction == ""
    assert settings.tasks["topic"].instruction == "Identify the topic or theme of the given text"
    assert len(settings.corpus.category_names) == 10
    assert set(settings.corpus.category_names) <= set(NEWSGROUPS)
    assert (settings.corpus.per_category, settings.corpus.random_state) == (80, 42)
    assert (settings.umap.n_neighbors, settings.umap.min_dist, settings.umap.random_state) == (
        15,
        0.1,
        42,
    )
    assert settings.embedding.model == "Qwen/Qwen3-Embedding-0.6B"
    assert (
        prompt_prefix(settings, "topic")
        == "Instruct: Identify the topic or theme of the given text\nQuery:"
    )
    assert prompt_prefix(settings, "default") == ""


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        ({"tasks": {"Topic!": {"instruction": "x"}}}, "tasks", "not a slug"),
        ({"tasks": {"evil\n": {"instruction": "x"}}}, "tasks", "not a slug"),
        (
            {"tasks": {"topic": {"instruction": "x" * 100_000}}},
            "tasks.topic.instruction",
            "at most 2000 characters",
        ),
        (
            {"storage": {"embedding_cache": "data/./qwen_assets.duckdb"}},
            "storage.embedding_cache",
            "names the same file as storage.database",
        ),
        (
            {"storage": {"embedding_cache": "data/build/../build/qwen_assets.duckdb"}},
            "storage.embedding_cache",
            "names the same file as storage.build_database",
        ),
        ({"publish": {"folder": "site/published"}}, "publish.folder", "overlap"),
        ({"publish": {"folder": "."}}, "publish.folder", "overlap"),
        ({"tasks": {"topic": {"instruction": "  "}}}, "tasks", "empty instruction"),
        (
            {"corpus": {"categories": ["sci.med", "sci.cooking"]}},
            "corpus.categories",
            "allowed: alt.atheism",
        ),
        ({"corpus": {"per_category": 0}}, "corpus.per_category", 'above 0, or "all"'),
        ({"corpus": {"extra_columns": ["author"]}}, "corpus.extra_columns", "reads a file"),
        (
            {"corpus": {"source": "posts.csv", "text_column": "body", "extra_columns": ["body"]}},
            "corpus.extra_columns",
            "'body' is already the text, label or id column",
        ),
        (
            {"corpus": {"source": "posts.csv", "extra_columns": ["url", "url"]}},
            "corpus.extra_columns",
            "lists a column twice",
        ),
        ({"corpus": {"max_chars": -5}}, "corpus.max_chars", "greater than 0"),
        ({"umap": {"min_dist": 1.5}}, "umap.min_dist", "less than or equal to 1"),
        ({"umap": {"n_neighbors": 1}}, "umap.n_neighbors", "greater than or equal to 2"),
        ({"umap": {"metric": "jaccardish"}}, "umap.metric", "'euclidean'"),
        ({"umap": {"align_to": "nope"}}, "umap.align_to", "allowed: default, topic"),
        ({"embedding": {"backend": "gpu"}}, "embedding.backend", "'auto', 'http' or 'local'"),
        ({"embedding": {"dimensions": 8}}, "embedding.dimensions", "greater than or equal to 32"),
        (
            {"embedding": {"prompt_template": "{text}"}},
            "embedding.prompt_template",
            "{instruction}",
        ),
        ({"embedding": {"batch_sise": 3}}, "embedding.batch_sise", "unknown key; allowed: model"),
        (
            {"variants": {"small": {"dimension": 128}}},
            "variants.small.dimension",
            "unknown key; allowed: ",
        ),
        (
            {"storage": {"database": "md:maps", "build_database": "maps_build.duckdb"}},
            "storage",
            "database and build_database must both be files or both MotherDuck databases",
        ),
        (
            {"publish": {"folder": "docs", "git_repository": "git@example.com:me/site.git"}},
            "publish",
            "not both",
        ),
        ({"publish": {"git_branch": "gh pages; rm"}}, "publish.git_branch", "match pattern"),
        ({"site": {"label_min_share": 0}}, "site.label_min_share", "greater than 0"),
        (
            {"embedding": {"local": {"runtime": "onnx"}}},
            "embedding.local.runtime",
            "'torch' or 'onnx-int8'",
        ),
        (
            {"embedding": {"local": {"runtime": "onnx-int8", "device": "cuda"}}},
            "embedding.local",
            'runs on the CPU: set device = "cpu"',
        ),
    ],
)
def test_bad_settings_name_the_key_and_what_is_allowed(overrides, key, says):
    with pytest.raises(SettingsError) as caught:
        parse_settings(settings_dict(**overrides), "bad.toml")
    message = str(caught.value)
    assert message.startswith("settings file bad.toml is invalid:")
    assert f"{key}:" in message and says in message
    assert "Traceback" not in message and "pydantic" not in message


def test_two_storage_settings_reaching_one_file_by_a_link_or_a_token_are_refused(tmp_path):
    (tmp_path / "cache.duckdb").touch()
    (tmp_path / "link.duckdb").symlink_to(tmp_path / "cache.duckdb")
    storage = {
        "database": str(tmp_path / "link.duckdb"),
        "embedding_cache": str(tmp_path / "cache.duckdb"),
    }
    with pytest.raises(SettingsError, match=r"storage\.embedding_cache: names the same file"):
        parse_settings(settings_dict(storage=storage))
    with pytest.raises(SettingsError) as caught:
        parse_settings(settings_dict(storage={"database": "md:demo", "embedding_cache": "md:demo"}))
    assert "names the same file as storage.database (md:demo)" in str(caught.value)


def test_duplicate_task_names_are_refused_by_the_file_format(tmp_path: Path):
    path = tmp_path / "dup.toml"
    path.write_text('[tasks.topic]\ninstruction = "a"\n[tasks.topic]\ninstruction = "b"\n')
    with pytest.raises(SettingsError, match=r"dup.toml is not valid TOML: .*topic"):
        load_settings(path)


def test_environment_points_at_another_file_and_overrides_paths(tmp_path: Path, monkeypatch):
    path = write_settings(
        tmp_path / "mine.toml", settings_dict(tasks={"extra": {"instruction": "Say more"}})
    )
    monkeypatch.setenv("QWEN_ASSETS_SETTINGS", str(path))
    monkeypatch.setenv("QWEN_ASSETS_DATABASE", "md:somewhere")
    settings = load_settings()
    assert settings.task_names[-1] == "extra"
    assert settings.storage.database == "md:somewhere"


def test_a_missing_file_is_one_clear_line(tmp_path: Path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nowhere.toml")


def test_task_version_changes_only_with_that_tasks_prompt():
    before = parse_settings(settings_dict())
    after = parse_settings(settings_dict(tasks={"topic": {"instruction": "What is this about?"}}))
    assert task_version(before, "topic") != task_version(after, "topic")
    assert all(
        task_version(before, t) == task_version(after, t)
        for t in ("default", "sentiment", "toxicity")
    )
    assert before.corpus.sample_fingerprint() == after.corpus.sample_fingerprint()


def test_the_local_runtime_versions_every_task_only_when_it_can_change_the_vectors():
    def versions(**embedding):
        settings = parse_settings(settings_dict(embedding=embedding))
        return [task_version(settings, task) for task in settings.task_names]

    torch = versions(backend="local")
    int8 = versions(backend="local", local={"runtime": "onnx-int8"})
    assert all(a != b for a, b in zip(torch, int8, strict=True))
    assert versions(backend="auto", local={"runtime": "onnx-int8"}) == int8
    assert versions(backend="http", local={"runtime": "onnx-int8"}) == versions(backend="http")
    assert versions(backend="http") == torch, "torch vectors are the model's own, as the API's"
    assert versions(backend="local", local={"exported_models": "elsewhere"}) == torch


def test_a_task_target_must_be_a_known_property():
    with pytest.raises(SettingsError) as raised:
        parse_settings(settings_dict(tasks={"topic": {"target": "mood"}}), "bad.toml")
    assert (
        "tasks.topic.target: Input should be 'category', 'sentiment', 'hostility' or 'length'"
        in str(raised.value)
    )
    default = load_settings()
    assert {name: task.target for name, task in default.tasks.items()} == {
        "default": None,
        "topic": "category",
        "sentiment": "sentiment",
        "toxicity": "hostility",
    }
