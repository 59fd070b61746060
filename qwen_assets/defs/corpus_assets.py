"""raw_newsgroups -> newsgroups_sample."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from qwen_assets.defs.metadata import content_hash, counts_markdown, preview_markdown
from qwen_assets.defs.resources import Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.pipeline.corpus import load_raw_newsgroups, stratified_sample
from qwen_assets.pipeline.embedding.core import announce
from qwen_assets.pipeline.properties import document_properties as properties_of
from qwen_assets.settings import SCORE_PROPERTIES, Settings, fingerprint

CORPUS_CODE_VERSION = fingerprint({"loader": 1})
POOL = "duckdb"


def corpus_assets(settings: Settings) -> list[AssetsDefinition]:
    corpus = settings.corpus

    @asset(
        group_name="corpus",
        code_version=CORPUS_CODE_VERSION,
        metadata=table_metadata("raw_newsgroups"),
        pool=POOL,
        kinds={"duckdb", "python"},
        description="All 18,846 posts of 20 Newsgroups (train + test), headers, footers and "
        "quotes removed. doc_id is the post's place in the archive, e.g. train/sci.med/59207.",
    )
    def raw_newsgroups(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
        frame = load_raw_newsgroups(corpus.archive)
        warehouse.replace_table("raw_newsgroups", frame)
        context.log.info("stored %d posts in raw_newsgroups", len(frame))
        return MaterializeResult(
            metadata={
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
        metadata=table_metadata("newsgroups_sample"),
        pool=POOL,
        kinds={"duckdb", "pandas"},
        description="The published demo's stratified sample: per_category posts from each "
        "configured group, whitespace collapsed, short texts dropped, long ones cut.",
    )
    def newsgroups_sample(
        context: AssetExecutionContext, warehouse: Warehouse
    ) -> MaterializeResult:
        raw = warehouse.query("SELECT * FROM raw_newsgroups")
        sample = stratified_sample(raw, corpus)
        frame = sample.frame
        warehouse.replace_table("newsgroups_sample", frame)
        for category, available in sample.short_categories.items():
            announce(
                context.log,
                f"corpus.per_category is {corpus.per_category}, but {category} has only "
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

    return [raw_newsgroups, newsgroups_sample, document_properties]
