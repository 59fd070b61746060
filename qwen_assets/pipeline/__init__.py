"""The pipeline's own work, in plain functions that import no Dagster: the corpus and its
sample, the embedding backends and their cache, the projection, the figures and clusters,
the site's payload and pages, publishing, and the queries people ask. The assets in
``qwen_assets.defs`` call these; so can a notebook."""
