"""(corpus_file, observed, for a user's own corpus) -> raw_newsgroups -> newsgroups_sample.

The built-in corpus keeps the names it was published with: raw_newsgroups holds every post of
the configured source, newsgroups_sample the drawn sample, whatever the source.
"""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    SourceAsset,
    asset,
    observable_source_asset,
)

from qwen_assets.defs.metadata import (
    SOURCE_VERSION_METADATA,
    content_hash,
    counts_markdown,
    preview_markdown,
)
from qwen_assets.defs.resources import Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.pipeline.corpus import corpus_file_version, draw_sample, load_corpus
from qwen_assets.pipeline.embedding.core import announce
from qwen_assets.pipeline.properties import document_properties as properties_of
from qwen_assets.settings import SCORE_PROPERTIES, Settings, fingerprint

POOL = "duckdb"
CORPUS_FILE = AssetKey("corpus_file")
NEWSGROUPS_DESCRIPTION = (
    "All 18,846 posts of 20 Newsgroups (train + test), headers, footers and quotes removed. "
    "doc_id is the post's place in the archive, e.g. train/sci.med/59207."
)


def sample_description(settings: Settings) -> str:
    corpus = settings.corpus
    if not corpus.from_file:
        return (
            "The published demo's stratified sample: per_category posts from each configured "
            "group, whitespace collapsed, short texts dropped, long ones cut."
        )
    if corpus.sample_size:
        drawn = f"{corpus.sample_size} posts at random"
    elif corpus.labelled and corpus.per_category != "all":
        drawn = f"{corpus.per_category} posts per label"
    else:
        drawn = "every post"
    return f"The sample: {drawn} of the file, whitespace collapsed, short texts dropped, long ones cut."


def corpus_assets(settings: Settings) -> list[AssetsDefinition | SourceAsset]:
    corpus = settings.corpus
    sources: list[AssetsDefinition | SourceAsset] = []
    if corpus.from_file:

        @observable_source_asset(
            key=CORPUS_FILE,
            group_name="corpus",
            description=f"The corpus file(s) {corpus.source}: its data version is a hash of "
            "their bytes, so an edit or an appended row makes raw_newsgroups stale.",
        )
        def corpus_file() -> DataVersion:
            return DataVersion(corpus_file_version(corpus))

        sources.append(corpus_file)
    labels = f"label column {corpus.label_column!r}" if corpus.label_column else "no labels"
    file_description = (
        f"Every row of {corpus.source}: text column {corpus.text_column!r}, {labels}, id "
        + (f"column {corpus.id_column!r}" if corpus.id_column else "made from the text")
        + "; split is the file a row came from."
    )

    @asset(
        group_name="corpus",
        deps=[CORPUS_FILE] if corpus.from_file else [],
        code_version=corpus.reading_fingerprint(),
        metadata=table_metadata("raw_newsgroups", extras=bool(corpus.extra_columns)),
        pool=POOL,
        kinds={"duckdb", "python"},
        description=file_description if corpus.from_file else NEWSGROUPS_DESCRIPTION,
    )
    def raw_newsgroups(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
        # The version first: a file changed while it is read is then seen changed again.
        version = corpus_file_version(corpus) if corpus.from_file else None
        raw = load_corpus(corpus)
        frame = raw.frame
        warehouse.replace_table("raw_newsgroups", frame)
        context.log.info("stored %d posts in raw_newsgroups", len(frame))
        if raw.repeated_texts:
            announce(
                context.log,
                f"{raw.repeated_texts} rows of {corpus.source} repeat an earlier row's text "
                "(their id is made from the text): kept the first of each; set "
                "corpus.id_column to keep them apart",
            )
        return MaterializeResult(
            metadata={
                **(
                    {
                        SOURCE_VERSION_METADATA: version,
                        "repeated_texts_left_out": raw.repeated_texts,
                    }
                    if version
                    else {}
                ),
                "table": "raw_newsgroups",
                "dagster/row_count": len(frame),
                "categories": int(frame["category"].nunique()),
                "per_split": counts_markdown(frame["split"].value_counts().sort_index(), "split"),
                "per_category": counts_markdown(
                    frame["category"].value_counts().sort_index(), "category"
                ),
                "preview": preview_markdown(frame[["doc_id", "category", "text"]]),
            },
            data_version=DataVersion(content_hash(frame)),
        )

    @asset(
        group_name="corpus",
        deps=[raw_newsgroups],
        code_version=corpus.sample_fingerprint(),
        metadata=table_metadata("newsgroups_sample", extras=bool(corpus.extra_columns)),
        pool=POOL,
        kinds={"duckdb", "pandas"},
        description=sample_description(settings),
    )
    def newsgroups_sample(
        context: AssetExecutionContext, warehouse: Warehouse
    ) -> MaterializeResult:
        raw = warehouse.query("SELECT * FROM raw_newsgroups")
        sample = draw_sample(raw, corpus)
        frame = sample.frame
        warehouse.replace_table("newsgroups_sample", frame)
        for category, available in sample.short_categories.items():
            announce(
                context.log,
                f"corpus.sample_size is {corpus.sample_size}, but only {available} posts are "
                f"left after cleaning: took all {available}"
                if corpus.sample_size
                else f"corpus.per_category is {corpus.per_category}, but {category} has only "
                f"{available} posts after cleaning: took all {available}",
            )
        lengths = frame["text"].str.len()
        return MaterializeResult(
            metadata={
                "table": "newsgroups_sample",
                "dagster/row_count": len(frame),
                "per_category": counts_markdown(
                    frame["category"].value_counts().sort_index(), "category"
                ),
                "short_categories": {
                    name: f"{count} of {corpus.per_category}"
                    for name, count in sample.short_categories.items()
                },
                "text_chars_min": int(lengths.min()),
                "text_chars_max": int(lengths.max()),
                "preview": preview_markdown(frame[["doc_id", "category", "preview"]]),
            },
            data_version=DataVersion(content_hash(frame)),
        )

    @asset(
        group_name="corpus",
        deps=[newsgroups_sample],
        code_version=fingerprint({"document_properties": 1, "scores": SCORE_PROPERTIES}),
        metadata=table_metadata("document_properties"),
        pool=POOL,
        kinds={"duckdb", "python"},
        description="Per post, besides its newsgroup, the properties a task may aim at: "
        "sentiment (VADER, -1..1), hostility (offensive-language probability, 0..1) and "
        "length (characters). Table document_properties, next to the embeddings.",
    )
    def document_properties(warehouse: Warehouse) -> MaterializeResult:
        sample = warehouse.query(
            "SELECT doc_id, category, text FROM newsgroups_sample ORDER BY position"
        )
        scores = properties_of(sample["text"].tolist())
        frame = pd.concat([sample[["doc_id", "category"]], scores], axis=1)
        warehouse.replace_table("document_properties", frame)
        by_category = frame.groupby("category")[list(SCORE_PROPERTIES)].mean().round(3)
        return MaterializeResult(
            metadata={
                "table": "document_properties",
                "dagster/row_count": len(frame),
                **{f"mean_{name}": round(float(scores[name].mean()), 3) for name in scores},
                "mean_per_category": MetadataValue.md(by_category.to_markdown()),
                "preview": preview_markdown(frame.drop(columns="category")),
            },
            data_version=DataVersion(content_hash(frame)),
        )

    return [*sources, raw_newsgroups, newsgroups_sample, document_properties]
