"""Is it the instruction? Paraphrases and controls are partitions like any task (exact
rebuilds, the cache), their figures are what scikit-learn finds on the stored vectors, and the
build warns of an instruction that moves its target no more than its controls do."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetKey

from qwen_assets.cli import main, rebuild_stale
from qwen_assets.pipeline.properties import sentiment_scores
from qwen_assets.pipeline.storage import read_table
from qwen_assets.settings import SettingsError, parse_settings, shuffled_words
from qwen_assets.testing import EmbeddingServer, settings_dict, write_settings
from qwen_assets_tests.conftest import Project, built_once, copy_project
from qwen_assets_tests.test_variants import batches, build

EMBEDDINGS, MAPS = AssetKey("task_embeddings"), AssetKey("umap_coordinates")


def with_controls(raw: dict) -> None:
    raw["controls"]["enabled"] = True


def test_the_shuffled_control_holds_the_instructions_tokens_in_another_order(minilm):
    """The same tokens (the stand-in's tokenizer, which splits on words as Qwen's does not
    quite: words are what is shuffled), not the same sequence; the generic control as many
    words as the instruction."""
    settings = parse_settings(settings_dict(controls={"enabled": True}))
    tokenize = minilm.tokenizer.tokenize
    shuffled = [p for p in settings.prompts.values() if p.role == "shuffled"]
    assert {p.task for p in shuffled} == {t for t, s in settings.tasks.items() if s.instruction}
    for prompt in shuffled:
        own = settings.tasks[prompt.task].instruction
        assert Counter(tokenize(prompt.instruction)) == Counter(tokenize(own))
        assert tokenize(prompt.instruction) != tokenize(own)
        assert shuffled_words(own) == prompt.instruction, "the same order every time"
    for prompt in (p for p in settings.prompts.values() if p.role == "generic"):
        own = settings.tasks[prompt.task].instruction
        assert len(prompt.instruction.split()) == len(own.split())
        assert not set(prompt.instruction.split()) >= set(own.split())


@pytest.mark.parametrize(
    ("embedding", "enabled", "on"),
    [
        ({"backend": "http"}, "auto", True),
        ({"backend": "local"}, "auto", False),
        ({"backend": "local"}, True, True),
        ({"backend": "http"}, False, False),
    ],
)
def test_controls_are_on_with_an_api_and_off_with_the_local_model_unless_set(
    embedding, enabled, on
):
    settings = parse_settings(settings_dict(embedding=embedding, controls={"enabled": enabled}))
    derived = [name for name in settings.prompt_names if name not in settings.tasks]
    per_task = {p.task: p for p in settings.prompts.values() if p.role != "task"}
    assert bool(derived) == on
    assert "default" not in per_task, "no instruction: nothing to shuffle or paraphrase"
    if on:  # each task's prompts follow it, so one task's edit is one range of partitions
        owners = [settings.prompts[name].task for name in settings.prompt_names]
        assert owners == sorted(owners, key=owners.index)


@pytest.mark.parametrize(
    ("paraphrases", "says"),
    [
        (["  "], "tasks.topic.paraphrases: a paraphrase is empty"),
        (
            ["Say what it is about", "Say what it is about"],
            "tasks.topic.paraphrases: two paraphrases are the same",
        ),
    ],
)
def test_an_empty_or_repeated_paraphrase_is_refused_naming_the_key(paraphrases, says):
    raw = settings_dict()
    raw["tasks"]["topic"]["paraphrases"] = paraphrases
    with pytest.raises(SettingsError) as refused:
        parse_settings(raw)
    assert says in str(refused.value)


@pytest.fixture(scope="session")
def controlled(small_built, server, tmp_path_factory, shared_folder):
    """The small project, copied, with controls on and built, once a session (shared as the
    small project is): (project, requests that build sent, their texts)."""

    def make(root: Path, stack: ExitStack) -> Project:
        project = copy_project(small_built, root, stack, with_controls)
        settings = project.settings()
        derived = [name for name in settings.prompt_names if name not in settings.tasks]
        report = rebuild_stale(project.instance, settings, log=lambda line: None)
        assert report.succeeded, report.failure
        assert set(report.plan.by_task) == set(derived), "only the new prompts' maps"
        return project

    for project in built_once(tmp_path_factory, shared_folder, server, "controlled", make):
        yield project, project.cold_requests, project.cold_texts


def test_controls_and_paraphrases_cost_exactly_their_own_batches(controlled, project_copy, server):
    built, requests, texts = controlled
    project = project_copy(of=built)
    settings = project.settings()
    derived = [p for p in settings.prompts.values() if p.role != "task"]
    distinct = {p.instruction for p in derived}
    assert requests == len(distinct) * batches(project)
    sent = {text.split("\nQuery:")[0].removeprefix("Instruct: ") for text in texts}
    assert sent == distinct, "only the paraphrases' and controls' prompts were sent"

    report, requests = build(project, server)
    assert report.run_ids == [] and requests == 0, "nothing changed: no run, no request"

    project.raw["tasks"]["topic"]["paraphrases"].append("Say which subject the text is about")
    write_settings(project.settings_path, project.raw)
    report, requests = build(project, server)
    assert list(report.plan.by_task) == ["topic.paraphrase-3"]
    assert all(assets == [EMBEDDINGS, MAPS] for assets in report.plan.by_task.values())
    assert requests == batches(project)


def test_the_figures_are_scikit_learns_on_the_stored_vectors(controlled):
    """The probe, the rank probe and V-measure of a control, recomputed here from the vectors
    the database holds, in scikit-learn's own terms; the effects table agrees with
    task_quality's rows."""
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import v_measure_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict, cross_val_score

    project = controlled[0]
    rows = read_table(
        project.database,
        """SELECT s.category, p.sentiment, e.embedding FROM task_embeddings e
           JOIN newsgroups_sample s USING (doc_id) JOIN document_properties p USING (doc_id)
           WHERE e.task = 'sentiment.shuffled' ORDER BY s.position""",
    )
    vectors = np.stack(rows["embedding"].to_numpy())
    labels = np.unique(rows["category"], return_inverse=True)[1]
    probe = cross_val_score(
        LogisticRegression(max_iter=2000),
        vectors,
        labels,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    ).mean()
    clusters = KMeans(len(set(labels)), n_init=10, random_state=0).fit_predict(vectors)
    predicted = cross_val_predict(
        RidgeCV(alphas=(0.1, 1.0, 10.0)),
        vectors,
        rows["sentiment"],
        cv=KFold(5, shuffle=True, random_state=0),
    )
    stored = read_table(
        project.database,
        "SELECT * FROM task_quality WHERE task = 'sentiment.shuffled'",
    ).iloc[0]
    assert stored["role"] == "shuffled" and stored["of_task"] == "sentiment"
    assert stored["probe_accuracy"] == pytest.approx(probe, abs=1e-4)
    assert stored["v_measure"] == pytest.approx(v_measure_score(labels, clusters), abs=1e-4)
    rho = spearmanr(rows["sentiment"], predicted).statistic
    assert stored["probe_sentiment"] == pytest.approx(rho, abs=1e-4)

    effects = read_table(project.database, "SELECT * FROM instruction_effects")
    target = effects[(effects.task == "sentiment") & effects.is_target].iloc[0]
    assert target["figure"] == "predicts_sentiment"
    assert (
        target["shuffled"]
        == read_table(
            project.database,
            "SELECT predicts_sentiment FROM task_quality WHERE task = 'sentiment.shuffled'",
        ).iloc[0, 0]
    )
    assert target["paraphrase_min"] <= target["instruction"] <= target["paraphrase_max"]
    assert target["paraphrases"] == 2
    assert target["beyond_shuffled"] == pytest.approx(target["instruction"] - target["shuffled"])


def test_the_command_line_gives_each_tasks_target_beside_its_controls(
    controlled, monkeypatch, capsys
):
    project = controlled[0]
    monkeypatch.setenv("QWEN_ASSETS_SETTINGS", str(project.settings_path))
    assert main(["effects", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    header, *lines = out.strip().splitlines()
    assert header.startswith("task,figure,instruction,paraphrase_min,paraphrase_max")
    assert {line.split(",")[1] for line in lines[:3]} == {
        "predicts_category",
        "predicts_sentiment",
        "predicts_hostility",
    }
    assert main(["effects", "--task", "topic"]) == 0
    every = capsys.readouterr().out
    assert "probe_accuracy" in every and "cka_with_reference" in every
    assert main(["effects", "--task", "default"]) == 2
    assert "no figures for default beside paraphrases or controls" in capsys.readouterr().err


ORDERED = "Classify the sentiment of the given text as positive, negative, or neutral"


def moved_only_by_words_in_order(minilm):
    """A backend that follows one instruction, and only with its words in order: the post's
    vector (the prompt left out) plus its sentiment along one axis. Every other prompt, its
    shuffled words included, gives the post's plain vector, the same to the last bit
    whatever else is in its batch."""
    plain: dict[str, np.ndarray] = {}

    def vectorise(texts: list[str]) -> np.ndarray:
        prompts, bodies = zip(
            *(text.split("\nQuery:", 1) if "\nQuery:" in text else ("", text) for text in texts),
            strict=True,
        )
        for body in set(bodies) - plain.keys():
            plain[body] = minilm.encode([body], show_progress_bar=False)[0]
        vectors = np.stack([plain[body] for body in bodies])
        follows = np.array([prompt == f"Instruct: {ORDERED}" for prompt in prompts])
        vectors[follows, 0] += sentiment_scores(list(bodies))[follows]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return vectorise


def test_the_build_warns_of_an_instruction_that_does_no_more_than_its_controls(
    small_built, minilm, tmp_path
):
    """Two tasks aim at sentiment: one whose instruction the backend follows, and one whose
    instruction is that one's shuffled control. Only the second is warned of."""
    scrambled = shuffled_words(ORDERED)
    assert shuffled_words(scrambled) != ORDERED
    double = EmbeddingServer(moved_only_by_words_in_order(minilm)).start()

    def edit(raw: dict) -> None:
        with_controls(raw)
        raw["embedding"]["http"]["base_url"] = double.base_url
        raw["embedding"]["model"] = "follows-one-instruction"
        default = raw["tasks"]["default"]
        raw["tasks"] = {
            "default": default,
            "tone": {"instruction": ORDERED, "target": "sentiment"},
            "scrambled": {"instruction": scrambled, "target": "sentiment"},
        }

    with ExitStack() as stack:
        stack.callback(double.stop)
        project = copy_project(small_built, tmp_path / "project", stack, edit)
        report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
        assert report.succeeded, report.failure
        assert len(report.warnings) == 1, report.warnings
        (warning,) = report.warnings
        assert warning.startswith(
            "scrambled's instruction moves sentiment no more than its shuffled words do"
        ) or warning.startswith(
            "scrambled's instruction moves sentiment no more than a generic instruction does"
        )
        effects = read_table(
            project.database, "SELECT * FROM instruction_effects WHERE is_target ORDER BY task"
        ).set_index("task")
        assert not effects.loc["tone", "within_controls"]
        assert effects.loc["tone", "beyond_shuffled"] > 0
        assert effects.loc["scrambled", "within_controls"]


@pytest.mark.parametrize("size", [(1440, 900), (1280, 800), (390, 844)])
def test_a_task_page_shows_its_figures_beside_its_wordings_and_controls(controlled, browser, size):
    """The card on the task's page: a row per figure with the numbers the table holds, a bar
    for each, the prompts compared, and no wider than the screen."""
    from qwen_assets.pipeline.site import task_page_name
    from qwen_assets_tests.test_site import Page

    project = controlled[0]
    effects = read_table(
        project.database, "SELECT * FROM instruction_effects WHERE task = 'toxicity'"
    )
    width, height = size
    opened = Page(
        browser, (project.root / "site").as_uri() + "/", viewport={"width": width, "height": height}
    )
    try:
        opened.open(task_page_name("toxicity"))
        card = opened.page.locator(".effects")
        rows = card.locator("tbody tr")
        assert rows.count() == len(effects)
        for row in effects.itertuples():
            cells = card.locator(f"tr[data-figure='{row.figure}'] td").all_inner_texts()
            assert cells[1:5] == [
                f"{row.instruction:.3f}",
                f"{row.paraphrase_min:.3f} \N{EN DASH} {row.paraphrase_max:.3f}",
                f"{row.shuffled:.3f}",
                f"{row.generic:.3f}",
            ]
        assert card.locator("svg.effect-bar circle.own").count() == len(effects)
        assert card.locator("details li").count() == 4, "two paraphrases and two controls"
        target = effects[effects.is_target].iloc[0]
        verdict = card.locator(".verdict")
        assert verdict.get_attribute("data-within") == str(bool(target.within_controls)).lower()
        named = {"shuffled": "its shuffled words", "generic": "a generic instruction"}
        assert named[target.strongest_control] in verdict.inner_text()
        assert opened.page.evaluate("document.documentElement.scrollWidth") <= width
        assert opened.errors == [] and opened.foreign_requests() == []
    finally:
        opened.close()


def test_the_documented_query_gives_each_tasks_target_beside_its_controls(controlled):
    from qwen_assets_tests.test_query import cli_answers_as_python_does, documented_query

    project = controlled[0]
    sql = documented_query("is it the instruction?")
    cli_answers_as_python_does(project.database, sql)
    found = read_table(project.database, sql).set_index("task")
    settings = project.settings()
    assert sorted(found.index) == sorted(t for t, s in settings.tasks.items() if s.target)
    assert (found["wordings_min"] <= found["instruction"]).all()
    assert (found["instruction"] <= found["wordings_max"]).all()
    assert set(found["figure"]) == {f"predicts_{settings.tasks[t].target}" for t in found.index}
