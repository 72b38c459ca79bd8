"""Local git repositories for tests: built with the git binary, served over ``file://``.

No network: a bare repository in a temporary directory, each commit pushed from a work tree.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    """Run git with a fixed identity and no user or system configuration; its stdout."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@dataclass(frozen=True)
class LocalRepository:
    bare: Path
    commits: tuple[str, ...]

    @property
    def url(self) -> str:
        return self.bare.as_uri()


def make_repository(root: Path, commits: Sequence[Mapping[str, str]]) -> LocalRepository:
    """A bare repository whose main branch has one commit per mapping (path -> new content)."""
    bare, work = root / "origin.git", root / "work"
    git(root, "init", "--bare", "--initial-branch=main", str(bare))
    git(root, "init", "--initial-branch=main", str(work))
    hashes = []
    for number, files in enumerate(commits, start=1):
        for path, content in files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git(work, "add", "-A")
        git(work, "commit", "-m", f"commit {number}")
        hashes.append(git(work, "rev-parse", "HEAD"))
    git(work, "push", str(bare), "main")
    return LocalRepository(bare=bare, commits=tuple(hashes))
