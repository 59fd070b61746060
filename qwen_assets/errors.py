"""The errors a person can act on, under one root.

Their messages are written to be read: the command line prints any of them alone, in one
line, and so does the closing line of a failed build. Each family root is defined here; the
errors under it live beside the code that raises them. The whole tree (a test holds it to
the code)::

    QwenAssetsError
    ├── SettingsError            settings.py: a key, a value or a file the settings refuse
    ├── CorpusError              pipeline/corpus.py: the archive is missing, unreadable or short
    ├── EmbeddingError           pipeline/embedding/: a request, a backend or a cache
    │   ├── EmbeddingConfigError     no key, a refused key, an unknown model
    │   ├── EmbeddingResponseError   a malformed answer: nothing of it is cached
    │   ├── RetryableStatus          an HTTP status worth asking again (429, 5xx)
    │   └── BatchTooLarge            the server refused a batch's size: it is split
    ├── ProjectionError          pipeline/projection.py: too few points to project
    ├── StorageError             pipeline/storage.py: a database problem
    │   ├── DatabaseBusyError        another process holds the lock
    │   ├── DatabaseMissingError     nothing built yet
    │   ├── DatabaseDamagedError     a file DuckDB cannot read
    │   ├── DiskFullError            no room to write
    │   ├── IncompleteStateError     the tables do not form one complete state yet
    │   ├── PartitionMissingError    a task's rows are missing
    │   ├── PartitionShapeError      a write would strand other tasks' rows
    │   └── CacheUnreadableError     the embedding cache file is damaged
    ├── QueryError               pipeline/query.py: a question the stored embeddings cannot answer
    ├── SiteError                pipeline/site.py: a site folder the project may not write
    ├── PublishError             pipeline/publish.py: the site could not be copied or pushed
    └── PlanError                orchestration/plan.py: a build asked for what is not there

Each family also derives from the built-in error it always was (``ValueError`` for what a
person typed, ``RuntimeError`` for what happened), so code that caught those still does.
"""

from __future__ import annotations


class QwenAssetsError(Exception):
    """Any error meant for a person: its message says what went wrong and what to do."""


class SettingsError(QwenAssetsError, ValueError):
    """The settings file or a settings value is refused; the message names the key."""


class CorpusError(QwenAssetsError, RuntimeError):
    """The newsgroups archive cannot give the sample the settings ask for."""


class EmbeddingError(QwenAssetsError, RuntimeError):
    """An embedding run failed; the message says why and what was kept."""


class ProjectionError(QwenAssetsError, ValueError):
    """The embeddings cannot be projected as the settings ask."""


class StorageError(QwenAssetsError, RuntimeError):
    """A database problem a user can act on; the message says which."""


class QueryError(QwenAssetsError, ValueError):
    """A question about the stored embeddings that they cannot answer."""


class SiteError(QwenAssetsError, RuntimeError):
    """The site cannot be written where the settings say."""


class PublishError(QwenAssetsError, RuntimeError):
    """The built site could not be published to its folder or repository."""


class PlanError(QwenAssetsError, ValueError):
    """A build asked for something the project does not have (``--force`` of no asset)."""


def error_names() -> frozenset[str]:
    """Class names of every error in the tree (of the modules imported so far): a failed
    Dagster step records the error's class only by name."""
    names: set[str] = set()
    pending: list[type[Exception]] = [QwenAssetsError]
    while pending:
        kind = pending.pop()
        names.add(kind.__name__)
        pending += kind.__subclasses__()
    return frozenset(names)
