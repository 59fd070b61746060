"""What each table and view holds, column by column, for Dagster's catalog.

Each table asset declares ``dagster/table_name`` and ``dagster/column_schema`` from here, so
the UI shows the columns people query before anything is built. A test holds these against
the database a build publishes.
"""

from __future__ import annotations

from dagster import TableColumn, TableSchema

from qwen_assets.settings import PROPERTIES, SCORE_PROPERTIES

VARIANT = ("variant", "VARCHAR", "the variant (how the task was embedded; see [variants])")
TASK = ("task", "VARCHAR", "the task (the partition, with the variant)")
DOC_ID = (
    "doc_id",
    "VARCHAR",
    "the post's place in the archive, e.g. train/sci.med/59207 (your own corpus: its id "
    "column, or a hash of the text)",
)
CATEGORY = ("category", "VARCHAR", "the newsgroup (your own corpus: its label, or null)")
EMBEDDING = (
    "embedding",
    "FLOAT[dim]",
    "the unit-length vector (dim: the model's size; FLOAT[] with variants, which may differ)",
)

COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "raw_newsgroups": [
        DOC_ID,
        ("corpus_position", "INTEGER", "order in the corpus: train, then test (or the file's)"),
        ("split", "VARCHAR", "train or test (your own corpus: the file the row came from)"),
        CATEGORY,
        ("text", "VARCHAR", "the post, headers, footers and quotes removed"),
    ],
    "newsgroups_sample": [
        ("position", "INTEGER", "order in the sample"),
        DOC_ID,
        CATEGORY,
        ("text", "VARCHAR", "whitespace collapsed, cut at corpus.max_chars"),
        ("preview", "VARCHAR", "the first corpus.preview_chars characters"),
    ],
    "document_properties": [
        DOC_ID,
        CATEGORY,
        ("sentiment", "DOUBLE", "VADER's compound score, -1 (negative) to 1 (positive)"),
        ("hostility", "DOUBLE", "probability that the post is offensive, 0 to 1"),
        ("length", "DOUBLE", "characters"),
    ],
    "task_embeddings": [VARIANT, TASK, DOC_ID, EMBEDDING],
    "umap_coordinates": [
        VARIANT,
        TASK,
        DOC_ID,
        ("x", "DOUBLE", "the task's UMAP layout"),
        ("y", "DOUBLE", "the task's UMAP layout"),
        ("x_aligned", "DOUBLE", "the layout rotated, scaled and shifted onto umap.align_to's"),
        ("y_aligned", "DOUBLE", "the layout rotated, scaled and shifted onto umap.align_to's"),
        (
            "placed_at",
            "TIMESTAMP",
            "when the post was placed onto the map's existing layout (UTC); null: laid out "
            "with the map",
        ),
        (
            "layout",
            "VARCHAR",
            "the map's layout, BASIS/POINTS: what it was projected from (UMAP settings and "
            "prompt) and a hash of its points; posts are placed only onto a layout of the "
            "same basis",
        ),
        ("aligned_onto", "VARCHAR", "the layout of umap.align_to's map that x_aligned is on"),
    ],
    "task_quality": [
        VARIANT,
        TASK,
        (
            "role",
            "VARCHAR",
            "task: a task's own instruction; paraphrase, shuffled or generic: one of its "
            "paraphrases or controls (see instruction_effects)",
        ),
        ("of_task", "VARCHAR", "the task the prompt belongs to (itself for a task)"),
        (
            "knn_accuracy",
            "DOUBLE",
            "share of posts whose 10 nearest neighbours' majority is their group",
        ),
        ("silhouette", "DOUBLE", "the newsgroups' silhouette, cosine, full dimension"),
        ("trustworthiness", "DOUBLE", "how well the 2-D map keeps the full-dimension neighbours"),
        ("overlap_with_reference", "DOUBLE", "mean neighbourhood overlap with the reference task"),
        (
            "documents_scored",
            "BIGINT",
            "posts the silhouette, trustworthiness, probes and V-measure were computed on "
            "(a sample of site.quality_sample_size above it)",
        ),
        (
            "probe_accuracy",
            "DOUBLE",
            "a linear probe's accuracy on the group, 5-fold cross-validated, full dimension "
            "(empty when a group has fewer than 5 posts)",
        ),
        ("v_measure", "DOUBLE", "V-measure of k-means clusters (one per group) against the groups"),
        ("cka_with_reference", "DOUBLE", "linear CKA between this space and the reference task's"),
        *[
            (f"predicts_{name}{where}", "DOUBLE", f"how far neighbourhoods agree on {name}{kind}")
            for where, kind in (("", ", full dimension"), ("_map", ", on the 2-D map"))
            for name in PROPERTIES
        ],
        *[
            (
                f"probe_{name}",
                "DOUBLE",
                f"Spearman correlation of {name} with a linear probe's (ridge) 5-fold "
                "cross-validated predictions of it, full dimension",
            )
            for name in SCORE_PROPERTIES
        ],
        (
            "overlap_with_reference_variant",
            "DOUBLE",
            "mean neighbourhood overlap with the same task in the reference variant",
        ),
        ("target", "VARCHAR", "the property the task's instruction aims at, if any"),
        (
            "predicts_target",
            "DOUBLE",
            "the figure on what the task aims at (predicts_sentiment for a sentiment task)",
        ),
        ("headline", "VARCHAR", "the target's figure against the default task's, in words"),
    ],
    "instruction_effects": [
        VARIANT,
        ("task", "VARCHAR", "a task with paraphrases or controls"),
        (
            "figure",
            "VARCHAR",
            "a column of task_quality: the target's predicts_ figure (e.g. predicts_sentiment), "
            "probe_accuracy, probe_sentiment, probe_hostility, probe_length, v_measure, "
            "overlap_with_reference, cka_with_reference",
        ),
        ("is_target", "BOOLEAN", "whether the figure is the task's target's"),
        ("instruction", "DOUBLE", "the figure for the task's own instruction"),
        ("paraphrase_min", "DOUBLE", "its least over the instruction and its paraphrases"),
        ("paraphrase_max", "DOUBLE", "its most over the instruction and its paraphrases"),
        ("paraphrases", "BIGINT", "how many paraphrases were embedded"),
        ("shuffled", "DOUBLE", "the figure for the instruction's own words shuffled"),
        ("generic", "DOUBLE", "the figure for a generic instruction as long"),
        ("beyond_shuffled", "DOUBLE", "instruction minus shuffled"),
        ("beyond_generic", "DOUBLE", "instruction minus generic"),
        (
            "strongest_control",
            "VARCHAR",
            "shuffled or generic: the control with the higher figure, the one to beat",
        ),
        (
            "within_controls",
            "BOOLEAN",
            "on the target's row: the instruction's figure is no higher than a control's (it "
            "moves its target no more than its controls do)",
        ),
    ],
    "map_clusters": [
        VARIANT,
        TASK,
        ("cluster", "INTEGER", "the cluster's number in the task's map"),
        ("label", "VARCHAR", "its most distinctive words, joined"),
        ("words", "VARCHAR[]", "its most distinctive words (c-TF-IDF)"),
        ("size", "INTEGER", "posts in it"),
        ("x", "DOUBLE", "where the label is drawn"),
        ("y", "DOUBLE", "where the label is drawn"),
        ("doc_ids", "VARCHAR[]", "the posts in it"),
    ],
    "site_builds": [
        ("built_at", "TIMESTAMP", "when the payload was written (UTC)"),
        ("payload_sha256", "VARCHAR", "data.json's hash"),
        ("payload_bytes", "BIGINT", "data.json's size"),
        ("documents", "INTEGER", "posts in it"),
        ("tasks", "VARCHAR[]", "its tasks"),
        ("variants", "VARCHAR[]", "its variants"),
        (
            "task_versions",
            "MAP(VARCHAR, VARCHAR)",
            "each map's prompt version (task or variant/task)",
        ),
        ("settings_fingerprint", "VARCHAR", "a hash of the settings it was built with"),
        ("output_dir", "VARCHAR", "where the site was written"),
    ],
    "task_documents": [
        VARIANT,
        TASK,
        DOC_ID,
        CATEGORY,
        ("text", "VARCHAR", "the sampled text"),
        ("preview", "VARCHAR", "its first characters"),
        EMBEDDING,
        ("x", "DOUBLE", "the aligned map"),
        ("y", "DOUBLE", "the aligned map"),
        ("x_raw", "DOUBLE", "the task's own UMAP layout"),
        ("y_raw", "DOUBLE", "the task's own UMAP layout"),
    ],
    "category_centroids": [
        VARIANT,
        TASK,
        CATEGORY,
        ("documents", "BIGINT", "posts of the group"),
        ("centroid", "DOUBLE[]", "the group's mean vector"),
    ],
}


# raw_newsgroups and newsgroups_sample of a file corpus with corpus.extra_columns set.
EXTRAS = (
    "extras",
    "VARCHAR",
    "JSON: the row's corpus.extra_columns by name, e.g. extras->>'$.author' (only when set)",
)


def table_metadata(table: str, extras: bool = False) -> dict[str, object]:
    """``dagster/table_name`` and ``dagster/column_schema`` of a table or view."""
    schema = TableSchema(
        columns=[
            TableColumn(name, kind, description=description)
            for name, kind, description in [*COLUMNS[table], *([EXTRAS] if extras else [])]
        ]
    )
    # Dagster's documented table keys (its TableMetadataSet is not exported in 1.13).
    return {"dagster/table_name": table, "dagster/column_schema": schema}
