"""Publishing the built site: into a folder (e.g. ``docs/`` for GitHub Pages), or as a commit
on a branch of a git repository, pushed to it (e.g. ``gh-pages``).

Both publish only a site that changed: the folder is compared file by file, and git commits
only when the tree differs. Git is driven through its command line, the one interface every
git host and credential helper supports; a publish works in a fresh temporary clone, so a
publish killed half way leaves nothing behind to repair.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qwen_assets.errors import PublishError
from qwen_assets.pipeline.redaction import redact_credentials
from qwen_assets.pipeline.site import OWNED_MARKER as MARKER
from qwen_assets.settings import PublishSettings

STAGING = ".qwen-staging-"  # beside the folder: .NAME.qwen-staging-XXXX, the copy being made
RETIRED = ".qwen-retired"  # beside the folder: .NAME.qwen-retired, the copy being replaced
AUTHOR = ("qwen-assets", "qwen-assets@users.noreply.github.com")
GIT_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Published:
    target: str  # the folder, or repository and branch
    changed: bool
    fingerprint: str  # of the published files
    files: int
    commit: str | None = None  # the commit on the branch (git only)


def site_fingerprint(folder: Path) -> tuple[str, int]:
    """A hash of every file's path and bytes under ``folder`` (not the marker, not .git)."""
    digest = hashlib.sha256()
    files = 0
    for path in sorted(_site_files(folder)):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
        files += 1
    return digest.hexdigest(), files


def _site_files(folder: Path):
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in {".git", MARKER}:
            yield path


def publish_to_folder(site: Path, folder: Path) -> Published:
    """Make ``folder`` an exact copy of ``site``. A folder that exists, is not empty and was not
    published here before is refused, never overwritten. The new copy is written beside the
    old one and swapped in, so readers see the old site or the new one, never a mix."""
    site, folder = Path(site), Path(folder)
    fingerprint, files = site_fingerprint(site)
    if folder.exists():
        if not (folder / MARKER).exists() and any(folder.iterdir()):
            raise PublishError(
                f"publish folder {folder} holds files this project did not put there; "
                f"name an empty or new folder (it is replaced on every publish)"
            )
        if (folder / MARKER).exists() and site_fingerprint(folder)[0] == fingerprint:
            return Published(str(folder), False, fingerprint, files)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # A publish killed half way leaves its staging or retired copy beside the folder: those
    # exact names are this project's, and nothing else beside the folder is touched.
    retired = folder.with_name(f".{folder.name}{RETIRED}")
    for leftover in [*folder.parent.glob(f".{glob.escape(folder.name)}{STAGING}*"), retired]:
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{STAGING}", dir=folder.parent))
    try:
        shutil.copytree(site, staging, dirs_exist_ok=True)
        (staging / MARKER).write_text("published by qwen-assets; replaced on every publish\n")
        staging.chmod(0o755)
        if folder.exists():
            folder.rename(retired)
        staging.rename(folder)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Published(str(folder), True, fingerprint, files)


def publish_to_git(site: Path, repository: str, branch: str, message: str) -> Published:
    """Commit ``site`` as the whole tree of ``branch`` in ``repository`` (a URL or a path) and
    push it, unless that branch already holds exactly this site. A missing branch is created
    with no history of its own (as GitHub Pages branches usually are)."""
    site = Path(site)
    fingerprint, files = site_fingerprint(site)
    target = f"{redact_credentials(repository)} ({branch})"
    with tempfile.TemporaryDirectory(prefix="qwen-assets-publish-") as scratch:
        clone = Path(scratch) / "site"
        _git(["init", "--quiet", str(clone)], None, target)
        _git(["remote", "add", "origin", repository], clone, target)
        exists = _git(["ls-remote", "--heads", "origin", branch], clone, target).strip()
        if exists:
            _git(["fetch", "--quiet", "--depth", "1", "origin", branch], clone, target)
            _git(["checkout", "--quiet", "-B", branch, "FETCH_HEAD"], clone, target)
        else:
            _git(["checkout", "--quiet", "--orphan", branch], clone, target)
        for entry in clone.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        shutil.copytree(site, clone, dirs_exist_ok=True)
        (clone / ".nojekyll").touch()  # GitHub Pages serves the files as they are
        _git(["add", "--all"], clone, target)
        if exists and not _git(["status", "--porcelain"], clone, target).strip():
            head = _git(["rev-parse", "HEAD"], clone, target).strip()
            return Published(target, False, fingerprint, files, head)
        name, email = AUTHOR
        _git(
            [
                "-c",
                f"user.name={name}",
                "-c",
                f"user.email={email}",
                "commit",
                "--quiet",
                "-m",
                message,
            ],
            clone,
            target,
        )
        _git(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], clone, target)
        head = _git(["rev-parse", "HEAD"], clone, target).strip()
    return Published(target, True, fingerprint, files, head)


def publish_site(site: Path, settings: PublishSettings) -> Published:
    """Publish ``site`` where ``settings`` say (they must name a folder or a repository)."""
    if settings.folder:
        return publish_to_folder(site, Path(settings.folder))
    if settings.git_repository:
        return publish_to_git(
            site, settings.git_repository, settings.git_branch, "Publish the qwen-assets site"
        )
    raise PublishError("publish: set publish.folder or publish.git_repository")


def _git(arguments: list[str], where: Path | None, target: str) -> str:
    environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # fail, never wait for a password
    try:
        done = subprocess.run(
            ["git", *arguments],
            cwd=where,
            env=environment,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise PublishError("publishing to a git branch needs git on the PATH") from None
    except subprocess.TimeoutExpired:
        raise PublishError(
            f"git {arguments[0]} for {target} took over {GIT_TIMEOUT_SECONDS}s"
        ) from None
    if done.returncode != 0:
        said = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = redact_credentials(said[-1]) if said else f"exit code {done.returncode}"
        raise PublishError(f"cannot publish to {target}: git {arguments[0]}: {reason}")
    return done.stdout
