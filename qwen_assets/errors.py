"""The errors a person can act on. Their messages are written to be read: the command line
prints them alone, in one line, and so does the closing line of a failed build."""

from __future__ import annotations


def user_error_types() -> tuple[type[Exception], ...]:
    """Imported on use, so that `qwen-assets --help` stays quick."""
    from qwen_assets.build.plan import PlanError
    from qwen_assets.corpus import CorpusError
    from qwen_assets.embedding import EmbeddingError
    from qwen_assets.publish import PublishError
    from qwen_assets.query import QueryError
    from qwen_assets.settings import SettingsError
    from qwen_assets.site import SiteError
    from qwen_assets.storage import StorageError

    return (
        CorpusError,
        EmbeddingError,
        PlanError,
        PublishError,
        QueryError,
        SettingsError,
        SiteError,
        StorageError,
    )


def user_error_names() -> frozenset[str]:
    """Class names of those errors and of every subclass: a failed Dagster step records the
    error's class only by name."""
    names: set[str] = set()
    pending = list(user_error_types())
    while pending:
        kind = pending.pop()
        names.add(kind.__name__)
        pending += kind.__subclasses__()
    return frozenset(names)
