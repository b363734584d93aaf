"""The registry's `candidate` is shared by every experiment that publishes to a store, so it moves only to a
version that beats it on validation, on the same validation split (data fingerprint); any other version is
registered without the alias and says why in one line. Against a fork of the shared pipeline's MLflow store."""

import threading

import pytest
from project import fork

from imgpipe.tracking import registry
from imgpipe.tracking.runs import MODEL_URI


@pytest.fixture
def client(pipeline, tmp_path, monkeypatch):
    project = fork(pipeline, tmp_path / "project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return registry.store_client()


def _experiment_run(client, candidate, **tags) -> str:
    """A run as another experiment's publish makes it: tagged like the candidate's (variant, seed, data), with
    `tags` changed, and a logged model (the candidate's own, which registering only points at)."""
    source = client.get_run(candidate.run_id)
    run = client.create_run(source.info.experiment_id, tags=source.data.tags | tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_only_a_better_model_on_the_same_validation_split_takes_the_candidate(client):
    name = "imgpipe-digits"
    first = client.get_model_version_by_alias(name, "candidate")
    candidate = lambda: client.get_model_version_by_alias(name, "candidate").version  # noqa: E731
    accuracy, loss = float(first.tags["val_accuracy"]), float(first.tags["val_loss"])
    fingerprint = first.tags["imgpipe.data_fingerprint"]
    assert MODEL_URI in client.get_run(first.run_id).data.tags

    worse = registry.register("digits", _experiment_run(client, first), {"val_accuracy": accuracy - 0.05, "val_loss": loss})
    assert not worse.candidate and int(worse.version) == first.version + 1
    assert worse.why == (f"version {worse.version} is not the candidate: its val accuracy {accuracy - 0.05:.4f} does not beat "
                         f"candidate version {first.version}'s {accuracy:.4f} on the same validation split")
    assert candidate() == first.version

    validation = first.tags["imgpipe.validation_fingerprint"]  # the split the pipeline's publish measured on
    other_split = {"imgpipe.data_fingerprint": "0" * 16, "imgpipe.validation_fingerprint": "1" * 16}
    other_data = registry.register("digits", _experiment_run(client, first, **other_split), {"val_accuracy": 1.0, "val_loss": 0.0})
    assert not other_data.candidate and "\n" not in other_data.why
    assert other_data.why.startswith(f"version {other_data.version} is not the candidate: it was scored on another validation "
                                     f"split (validation_fingerprint {'1' * 16}) than candidate version {first.version} ({validation})")
    assert candidate() == first.version
    assert client.get_model_version(name, other_data.version).tags["imgpipe.data_fingerprint"] == "0" * 16  # registered
    # A version registered before runs carried the validation split's own fingerprint compares by all its data's.
    untagged = client.get_run(first.run_id).data.tags.keys() - {"imgpipe.validation_fingerprint"}
    old = _experiment_run(client, first, **{"imgpipe.data_fingerprint": "0" * 16})
    client.delete_tag(old, "imgpipe.validation_fingerprint")
    assert "imgpipe.validation_fingerprint" not in client.get_run(old).data.tags and untagged
    older = registry.register("digits", old, {"val_accuracy": 1.0, "val_loss": 0.0})
    assert not older.candidate and older.why.startswith(f"version {older.version} is not the candidate: it was scored on another "
                                                        f"validation split (data_fingerprint {'0' * 16}) than candidate version "
                                                        f"{first.version} ({fingerprint})")

    # The same accuracy wins only with a lower val loss; a higher accuracy wins outright.
    tie = registry.register("digits", _experiment_run(client, first), {"val_accuracy": accuracy, "val_loss": loss + 0.1})
    assert not tie.candidate
    better = registry.register("digits", _experiment_run(client, first), {"val_accuracy": accuracy, "val_loss": loss / 2})
    assert better.candidate and better.why == (f"version {better.version} is the candidate: val accuracy {accuracy:.4f} as version "
                                     f"{first.version}'s, with a lower val loss ({loss / 2:.4f} < {loss:.4f})")
    assert candidate() == int(better.version)

    higher = registry.register("digits", _experiment_run(client, first), {"val_accuracy": accuracy + 0.01, "val_loss": loss})
    assert higher.candidate and candidate() == int(higher.version)

    again = registry.register("digits", client.get_model_version(name, higher.version).run_id, {})  # a publish rerun
    assert again.version == higher.version and again.candidate

    # Images excluded from training (README's label-cleaning loop): other data, the same validation split, so the
    # figures compare and the better model takes the candidate.
    cleaned = registry.register("digits", _experiment_run(client, first, **{"imgpipe.data_fingerprint": "2" * 16}),
                                {"val_accuracy": accuracy + 0.02, "val_loss": loss})
    assert cleaned.candidate and candidate() == int(cleaned.version)


def test_two_publishes_registering_one_run_at_once_leave_one_version(client, monkeypatch):
    """On a server nothing makes them take turns: both find no version of the run and both register it. The first
    version stands; the publish that made the second removes it and goes on with the first."""
    name = "imgpipe-digits"
    first = client.get_model_version_by_alias(name, "candidate")
    run_id = _experiment_run(client, first)
    made = []

    def raced(uri, model_name, tags=None):  # the version of this run, as its logged model names it
        made.append(client.create_model_version(model_name, uri, run_id=run_id, tags=tags))  # the other publish, sooner
        made.append(client.create_model_version(model_name, uri, run_id=run_id, tags=tags))
        return made[-1]

    monkeypatch.setattr(registry.mlflow, "register_model", raced)
    registered = registry.register("digits", run_id, {"val_accuracy": 0.0, "val_loss": 9.9})
    assert [v.version for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")] == [made[0].version]
    assert registered.version == str(made[0].version) and int(made[1].version) == int(made[0].version) + 1


def test_an_experiment_named_like_a_path_makes_a_name_the_registry_takes():
    assert registry.registered_name("digits") == "imgpipe-digits"
    assert registry.registered_name("team/digits") == "imgpipe-team-digits"
    assert registry.registered_name("/Users/me@example.com/digits") == "imgpipe-Users-me@example.com-digits"
    assert registry.registered_name("o'brien: v2") == "imgpipe-o-brien- v2"
    from mlflow.utils.validation import _validate_model_name

    _validate_model_name(registry.registered_name("/Users/me/digits:2"))  # MLflow's own check: no error


def test_the_first_version_of_a_model_becomes_its_candidate():
    assert registry.candidacy({"val_accuracy": "0.5", "val_loss": "1.0"}, None, "1", None) == (True, "version 1 is the candidate")


def test_two_experiments_publishing_at_once_leave_the_candidate_on_the_better(client, monkeypatch):
    """Nothing serializes two publishes to a tracking server (nor to this store, which is not the embedded one): here the
    worse experiment (better than the candidate) compares with the candidate, the better one then registers and takes the
    alias, and only then does the worse one move it, as its comparison allowed. The alias still ends on the better one."""
    name = "imgpipe-digits"
    first = client.get_model_version_by_alias(name, "candidate")
    accuracy, loss = float(first.tags["val_accuracy"]), float(first.tags["val_loss"])
    runs = {which: _experiment_run(client, first) for which in ("worse", "better")}
    compared, better_registered = threading.Event(), threading.Event()
    decide = registry.candidacy

    def in_turn(*args):  # the worse publish, its candidate read, waits for the better one to finish
        if threading.current_thread().name == "worse":
            compared.set()
            better_registered.wait(60)
        return decide(*args)

    monkeypatch.setattr(registry, "candidacy", in_turn)
    said = {}
    worse = threading.Thread(name="worse", target=lambda: said.update(
        worse=registry.register("digits", runs["worse"], {"val_accuracy": accuracy + 0.01, "val_loss": loss})))
    worse.start()
    assert compared.wait(60)
    said["better"] = registry.register("digits", runs["better"], {"val_accuracy": accuracy + 0.02, "val_loss": loss})
    better_registered.set()
    worse.join(60)
    assert said["better"].candidate and not said["worse"].candidate
    assert client.get_model_version_by_alias(name, "candidate").version == int(said["better"].version)
    assert said["worse"].why == (f"version {said['worse'].version} is not the candidate: its val accuracy {accuracy + 0.01:.4f} "
                                 f"does not beat candidate version {said['better'].version}'s {accuracy + 0.02:.4f} on the same "
                                 "validation split")
