"""The corpus assets, on the real archive."""

import socket
from pathlib import Path

import pandas as pd
import pytest

from qwen_assets.pipeline.corpus import CorpusError, read_archive, stratified_sample
from qwen_assets.pipeline.storage import read_table
from qwen_assets.settings import load_settings
from qwen_assets.testing import project_settings, write_settings
from qwen_assets_tests.conftest import ARCHIVE_ENV, Project, cli_on


@pytest.fixture(scope="module")
def raw(built) -> pd.DataFrame:
    return read_table(built.database, "SELECT * FROM raw_newsgroups")


@pytest.fixture(scope="module")
def sample(built) -> pd.DataFrame:
    return read_table(built.database, "SELECT * FROM newsgroups_sample ORDER BY position")


def test_raw_table_holds_the_whole_corpus(raw):
    assert len(raw) == 18_846
    assert raw["category"].nunique() == 20
    assert raw["doc_id"].is_unique
    assert set(raw["split"]) == {"train", "test"}
    assert raw["doc_id"].str.fullmatch(r"(train|test)/[a-z.-]+/\d+").all()
    # doc_id names the post's own group
    assert (raw["doc_id"].str.split("/").str[1] == raw["category"]).all()


def test_sample_is_80_clean_documents_per_group(sample):
    settings = load_settings()
    assert len(sample) == 800
    assert sample.groupby("category").size().to_dict() == {
        c: 80 for c in settings.corpus.category_names
    }
    lengths = sample["text"].str.len()
    assert lengths.between(100, 5000).all()
    assert not sample["text"].str.contains(r"\s\s|[\n\t\r]").any()
    assert sample["doc_id"].is_unique
    assert (sample["preview"].str.len() <= 201).all()


def test_sample_is_identical_when_built_twice(raw, sample):
    settings = load_settings()
    again = stratified_sample(raw, settings.corpus).frame
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True), sample.reset_index(drop=True), check_dtype=False
    )


def fill_sklearn_cache(archive: Path, data_home: Path) -> None:
    """scikit-learn's 20 Newsgroups cache, made from the local archive as its downloader makes
    it (its downloader checks a checksum of another copy of the archive). The cache's name and
    format are scikit-learn's own, not public: if they move, this helper fails loudly."""
    import codecs
    import pickle
    import tarfile
    import tempfile

    from sklearn.datasets import load_files

    with tempfile.TemporaryDirectory() as workdir:
        with tarfile.open(archive, "r:gz") as tar:
            # The safe "data" filter where tarfile has it (3.11.4 on; Debian 12's 3.11.2 lacks it).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(workdir, **safe)
        cache = {
            split: load_files(Path(workdir, f"20news-bydate-{split}"), encoding="latin1")
            for split in ("train", "test")
        }
    data_home.mkdir(parents=True, exist_ok=True)
    (data_home / "20news-bydate_py3.pkz").write_bytes(
        codecs.encode(pickle.dumps(cache), "zlib_codec")
    )


def test_sample_matches_the_published_recipe_text_for_text(sample, archive, tmp_path):
    """The demo fetched the groups with scikit-learn's fetch_20newsgroups, shuffled, cleaned,
    and drew 80 per group: the project reads the archive itself, and gets the same texts in
    the same order."""
    from sklearn.datasets import fetch_20newsgroups

    settings = load_settings()
    fill_sklearn_cache(Path(archive), tmp_path / "scikit_learn_data")
    fetched = fetch_20newsgroups(
        data_home=str(tmp_path / "scikit_learn_data"),
        subset="all",
        categories=settings.corpus.category_names,
        remove=("headers", "footers", "quotes"),
        random_state=42,
        download_if_missing=False,
    )
    frame = pd.DataFrame(
        {"text": fetched.data, "category": [fetched.target_names[t] for t in fetched.target]}
    )
    frame["text"] = frame["text"].str.replace(r"\s+", " ", regex=True).str.strip()
    frame = frame[frame["text"].str.len() >= 100]
    frame["text"] = frame["text"].str[:5000]
    expected = pd.concat(
        [
            frame[frame["category"] == c].sample(n=80, random_state=42)
            for c in sorted(frame["category"].unique())
        ]
    )
    assert expected["text"].tolist() == sample["text"].tolist()


def test_a_group_with_too_few_documents_gives_all_it_has(raw):
    settings = load_settings()
    corpus = settings.corpus.model_copy(update={"categories": ["sci.med"], "per_category": 5000})
    drawn = stratified_sample(raw, corpus)
    assert 0 < len(drawn.frame) == drawn.short_categories["sci.med"] < 5000


def test_missing_or_corrupt_archive_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_archive(tmp_path / "missing.tar.gz")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball at all")
    with pytest.raises(CorpusError, match=r"not a readable \.tar\.gz"):
        read_archive(broken)


def test_an_archive_reaching_outside_its_folder_is_refused(tmp_path):
    import io
    import tarfile

    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        body = b"planted"
        member = tarfile.TarInfo("../../planted.txt")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    with pytest.raises(CorpusError, match=str(hostile)):
        read_archive(hostile)
    assert not list(tmp_path.rglob("planted.txt")), "nothing was written outside"


def test_offline_without_an_archive_a_first_build_says_how_to_fix_it(
    tmp_path, server, monkeypatch, capsys
):
    """No archive and no network (every connection but the loopback refused here, so the test
    never downloads): the first build ends with one line naming the asset, the download that
    failed and the setting to use."""
    real_connect = socket.socket.connect

    def loopback_only(self, address):
        if not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            raise OSError(f"the network is off in this test (asked for {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.delenv(ARCHIVE_ENV, raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "scikit_learn_data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    raw = project_settings(tmp_path, server, archive=None)
    write_settings(tmp_path / "settings.toml", raw)
    cli = cli_on(Project(tmp_path, raw, instance=None), monkeypatch, capsys)

    cli("build", expect=1)
    (said,) = [line for line in cli.err.splitlines() if line.startswith("qwen-assets:")]
    assert "raw_newsgroups: could not download 20 Newsgroups" in said
    assert "set QWEN_ASSETS_NEWSGROUPS_ARCHIVE (or corpus.archive) to a local copy" in said
    assert not list((tmp_path / "scikit_learn_data").rglob("*.tar.gz")), "nothing came down"
