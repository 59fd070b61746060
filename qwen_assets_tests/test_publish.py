"""Publishing the site into a folder and onto a branch of a real (local, bare) git repository."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen_assets.pipeline.publish import (
    MARKER,
    PublishError,
    publish_to_folder,
    publish_to_git,
    site_fingerprint,
)


def git(*arguments: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def make_site(root: Path, version: str) -> Path:
    site = root / "site"
    (site / "assets").mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_text(f"<h1>{version}</h1>")
    (site / "assets" / "explorer.js").write_text(f"// {version}")
    return site


def files_of(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in folder.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(folder).parts
    }


def test_a_folder_becomes_an_exact_copy_and_only_a_changed_site_is_copied(tmp_path):
    site = make_site(tmp_path, "one")
    docs = tmp_path / "repo" / "docs"
    first = publish_to_folder(site, docs)
    assert first.changed and first.files == 2
    assert files_of(docs) == {**files_of(site), MARKER: (docs / MARKER).read_text()}

    assert not publish_to_folder(site, docs).changed, "the same site is not copied again"

    (site / "assets" / "explorer.js").unlink()
    (site / "index.html").write_text("<h1>two</h1>")
    second = publish_to_folder(site, docs)
    assert second.changed and second.fingerprint != first.fingerprint
    assert not (docs / "assets" / "explorer.js").exists(), "a file gone from the site is gone"
    assert (docs / "index.html").read_text() == "<h1>two</h1>"
    assert [p.name for p in docs.parent.iterdir()] == ["docs"], "no staging folder left behind"


def test_a_publish_killed_half_way_is_cleared_by_the_next(tmp_path):
    site = make_site(tmp_path, "many")
    for number in range(20000):  # enough files that the copy takes a while
        (site / "assets" / f"{number}.txt").write_text(str(number))
    docs = tmp_path / "docs"
    victim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from qwen_assets.pipeline.publish import publish_to_folder; "
            "publish_to_folder(sys.argv[1], sys.argv[2])",
            str(site),
            str(docs),
        ]
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".docs.*/assets")):
        assert victim.poll() is None and time.monotonic() < deadline, "it never started copying"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert list(tmp_path.glob(".docs.*")), "killed while copying, as intended"

    assert publish_to_folder(site, docs).changed
    assert files_of(docs) == {**files_of(site), MARKER: (docs / MARKER).read_text()}
    assert not list(tmp_path.glob(".docs.*")), "what the killed publish left is gone"


def test_a_publish_touches_nothing_beside_the_folder_but_what_it_made(tmp_path):
    """Siblings whose names start like the folder's (a user's ``.docs.backup``) survive a
    publish and the clean-up after a killed one."""
    site = make_site(tmp_path, "one")
    docs = tmp_path / "docs"
    backup = tmp_path / ".docs.backup"
    backup.mkdir()
    (backup / "index.html").write_text("last year's site")
    (tmp_path / ".docs.notes").write_text("mine")
    publish_to_folder(site, docs)
    (site / "index.html").write_text("<h1>two</h1>")
    assert publish_to_folder(site, docs).changed
    assert files_of(backup) == {"index.html": "last year's site"}
    assert (tmp_path / ".docs.notes").read_text() == "mine"


def test_a_folder_holding_someone_elses_files_is_refused_untouched(tmp_path):
    site = make_site(tmp_path, "one")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(PublishError, match="did not put there"):
        publish_to_folder(site, theirs)
    assert files_of(theirs) == {"thesis.tex": "years of work"}


def test_a_branch_of_a_bare_repository_gets_the_site_once_per_change(tmp_path):
    remote = tmp_path / "pages.git"
    git("init", "--quiet", "--bare", str(remote))
    site = make_site(tmp_path, "one")

    first = publish_to_git(site, str(remote), "gh-pages", "Publish the site")
    assert first.changed
    assert git("rev-parse", "refs/heads/gh-pages", cwd=remote).strip() == first.commit
    checkout = tmp_path / "checkout"
    git("clone", "--quiet", "--branch", "gh-pages", str(remote), str(checkout))
    assert files_of(checkout) == {**files_of(site), ".nojekyll": ""}

    again = publish_to_git(site, str(remote), "gh-pages", "Publish the site")
    assert not again.changed and again.commit == first.commit, "no empty commit"

    (site / "index.html").write_text("<h1>two</h1>")
    second = publish_to_git(site, str(remote), "gh-pages", "Publish the site")
    assert second.changed
    assert git("rev-parse", f"{second.commit}^", cwd=remote).strip() == first.commit
    assert git("show", f"{second.commit}:index.html", cwd=remote) == "<h1>two</h1>"
    assert second.fingerprint == site_fingerprint(site)[0]


def test_an_unreachable_repository_is_one_line_and_no_credential(tmp_path):
    site = make_site(tmp_path, "one")
    with pytest.raises(PublishError) as raised:
        publish_to_git(site, "https://someone:tok-s3cret@127.0.0.1:9/pages.git", "gh-pages", "m")
    message = str(raised.value)
    assert "tok-s3cret" not in message and "\n" not in message
    assert message.startswith("cannot publish to https://***@127.0.0.1:9/pages.git (gh-pages)")


def test_the_published_site_asset_follows_site_pages_and_commits_only_a_changed_site(
    small_built, project_copy, tmp_path
):
    """The asset, run by Dagster after site_pages on a copy of a built project."""
    from dagster import AssetKey, instance_for_test

    from qwen_assets.definitions import build_definitions
    from qwen_assets.defs.jobs import ASSETS_JOB

    remote = tmp_path / "pages.git"
    git("init", "--quiet", "--bare", str(remote))

    site = tmp_path / "site"
    subprocess.run(["cp", "-r", str(small_built.root / "site"), str(site)], check=True)

    def publish_to_the_bare_repository(raw: dict) -> None:
        raw["site"]["output_dir"] = str(site)
        raw["publish"] = {"git_repository": str(remote), "git_branch": "pages"}

    project = project_copy(publish_to_the_bare_repository)
    defs = build_definitions(project.settings())
    published = defs.resolve_assets_def("published_site")
    assert AssetKey("site_pages") in published.asset_deps[AssetKey("published_site")]
    job = defs.resolve_job_def(ASSETS_JOB)

    def publish() -> dict:
        with instance_for_test() as instance:
            result = job.execute_in_process(
                instance=instance, asset_selection=[AssetKey("published_site")]
            )
            assert result.success
            return result.asset_materializations_for_node("published_site")[0].metadata

    def commits() -> list[str]:
        return git("rev-list", "pages", cwd=remote).split()

    first = publish()
    assert first["changed"].value is True
    assert git("show", "pages:index.html", cwd=remote) == (site / "index.html").read_text()
    assert commits() == [first["commit"].value]
    assert publish()["changed"].value is False, "an unchanged site is not committed again"
    assert commits() == [first["commit"].value], "the remote holds no new commit"
    (site / "data.js").write_text((site / "data.js").read_text() + "\n")
    third = publish()
    assert third["changed"].value is True and third["commit"].value != first["commit"].value
    assert commits() == [third["commit"].value, first["commit"].value]
