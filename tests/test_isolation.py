"""The test projects stand on none of the user's own configuration: a checkout with its own DVC remote and
credentials (.dvc/config.local, as README's team section sets one up), a global DVC config and a git config that
signs every commit still gives test projects that use only what the tests give them, and carry no secret."""

import shutil

from project import PROJECT_FILES, REPO, copy_project, run

SECRET = "users-own-secret-key-0123456789"


def test_a_test_project_carries_none_of_the_users_local_settings(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in PROJECT_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, checkout / name)
    (checkout / ".dvc" / "config.local").write_text(
        "[core]\n    remote = theirs\n['remote \"theirs\"']\n    url = s3://their-bucket/dvc\n"
        f"    access_key_id = THEIRKEY\n    secret_access_key = {SECRET}\n")
    home = tmp_path / "home"
    (home / ".config" / "dvc").mkdir(parents=True)
    (home / ".config" / "dvc" / "config").write_text("[core]\n    remote = global\n['remote \"global\"']\n    url = /nowhere\n")
    (home / ".gitconfig").write_text("[commit]\n    gpgsign = true\n[gpg]\n    program = false\n")  # every commit would fail
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))

    project = copy_project(tmp_path / "project", source=checkout)  # commits: git's user config is not read
    assert not (project / ".dvc" / "config.local").exists()
    assert not [path for path in project.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert run(["dvc", "remote", "list"], project).stdout.strip() == ""
    assert run(["dvc", "config", "core.remote"], project, check=False).stdout.strip() == ""
    # The same DVC, given the user's own config, would have found it: the check above can fail.
    shown = run(["dvc", "remote", "list", "--global"], project, DVC_GLOBAL_CONFIG_DIR=str(home / ".config" / "dvc"))
    assert "global" in shown.stdout
