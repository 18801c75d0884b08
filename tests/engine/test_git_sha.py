"""A run record's commit says when the source it ran differed from that commit."""

from __future__ import annotations

import subprocess

from bmdbench import store


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_the_commit_is_marked_dirty_only_when_the_source_changed(tmp_path):
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "benchmark" / "trainer.py").write_text("x = 1\n")
    (tmp_path / "results" / "table.md").write_text("old\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    where = tmp_path / "benchmark"
    clean = store.git_sha(where)
    assert len(clean) == 40 and not clean.endswith("-dirty")

    (tmp_path / "results" / "table.md").write_text("regenerated\n")  # an output, not source
    assert store.git_sha(where) == clean

    (tmp_path / "benchmark" / "trainer.py").write_text("x = 2\n")
    assert store.git_sha(where) == clean + "-dirty"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert store.git_sha(tmp_path) == "unknown"
