"""Data-parallel training on the CPU: 2 gloo processes, joined as torchrun joins them, train as 1 process does (same
seed, same global batch). `dvc repro` with train.devices: 2 (the train stage starting its ranks through torchrun), one
MLflow run per variant: test_tracking_server."""

import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from project import stage_env
from servers import free_port

from imgpipe.config import TrainConfig
from imgpipe.data.prepared import load_prepared, save_prepared
from imgpipe.errors import InvalidSetting
from imgpipe.training.batchnorm import reestimate
from imgpipe.training.distributed import ProcessGroup
from imgpipe.training.loop import train

# An odd global batch: the ranks' shares differ by one image, and the last batch is shorter still.
# fp32: in bf16 the products of a share and of the whole batch round apart, so the logic is compared in fp32.
CONFIG = TrainConfig(epochs=2, batch_size=45, lr=0.01, crop_padding=1, flip=True, device="cpu", threads=1, precision="fp32")
SETTINGS = {"hidden": [32]}  # mlp without dropout: dropout draws differ per process by design

# Each rank trains every job in turn, in one start: starting two ranks (each importing torch and the engine) costs
# more than the small trainings themselves, so the tests share one start.
RANK = """
import json, sys, torch
from pathlib import Path
from imgpipe.training import distributed
from imgpipe.config import TrainConfig
from imgpipe.data.prepared import load_prepared
from imgpipe.training.loop import train

folder, jobs, out = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
group = distributed.join("cpu")
masks, dropout = [], torch.nn.functional.dropout
def recorded(input, p=0.5, training=True, inplace=False):  # the first dropout mask of each job, on this rank
    output = dropout(input, p, training, inplace)
    if training and not masks:  # dropped: zeroed where the input was not (ReLU's zeros are no draw)
        masks.append([(input != 0).flatten().tolist(), (output == 0).flatten().tolist()])
    return output
torch.nn.functional.dropout = recorded
for name, (model, settings, config) in jobs.items():
    masks.clear()
    if name.endswith("_resumed"):  # killed (every rank) after epoch 1, then started again from the resume state
        resume = out / f"{name}.resume.pt"
        def killed(row):
            if row["epoch"] == 1:
                raise KeyboardInterrupt
        try:
            train(model, settings, load_prepared(folder), TrainConfig(**config), group=group, resume=resume, on_epoch=killed)
        except KeyboardInterrupt:
            pass
        result = train(model, settings, load_prepared(folder), TrainConfig(**config), group=group, resume=resume)
    else:
        result = train(model, settings, load_prepared(folder), TrainConfig(**config), group=group)
    torch.save({"weights": result.model.state_dict(), "history": result.history, "world": group.world,
                "images_per_rank": result.images_per_rank, "resumed": result.summary()["resumed_after_epochs"], "mask": masks[0] if masks else None}, out / f"{name}-rank{group.rank}.pt")
distributed.leave()
"""

JOBS = {  # name: (model, settings, config), each trained on 2 ranks by the one torchrun
    "mlp": ("mlp", SETTINGS, CONFIG),
    "batch_norm": ("cnn", {"channels": [4], "batch_norm": True}, replace(CONFIG, epochs=1)),  # two batch norms
    "batch_norm_as_trained": ("cnn", {"channels": [4], "batch_norm": True}, replace(CONFIG, epochs=1, bn_images=0)),
    "muon_cutout": ("cnn", {"channels": [4]}, replace(CONFIG, epochs=1, optimizer="muon", lr=0.05, cutout=3)),
    # An even batch: equal shares, where one seed on every rank repeated the masks row for row.
    "dropout": ("mlp", {"hidden": [32], "dropout": 0.5}, replace(CONFIG, batch_size=44)),
    "dropout_resumed": ("mlp", {"hidden": [32], "dropout": 0.5}, replace(CONFIG, batch_size=44)),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, digits_prepared):
    folder = tmp_path_factory.mktemp("distributed") / "prepared"
    save_prepared(digits_prepared, folder)
    return folder


def start_ranks(world: int, args: list[str], logs: Path, seconds: float = 300) -> None:
    """`python args` as ranks 0..world-1 of one group, in the environment torchrun gives its workers (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), started here rather than by torchrun, whose own process (its agent, importing torch) costs some
    2 CPU-seconds; each rank a warm `python` (tests/warm_python.py). Like torchrun, ends the others when one fails; fails
    showing what the failed ones printed last."""
    group = {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = []
    for rank in range(world):
        with open(logs / f"rank{rank}.log", "w") as log:
            ranks.append(subprocess.Popen(["python", *args], stdout=log, stderr=subprocess.STDOUT,
                                          env=stage_env(**group, RANK=str(rank), LOCAL_RANK=str(rank))))
    deadline = time.monotonic() + seconds
    while None in (codes := [p.poll() for p in ranks]) and not any(codes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in ranks:
        if p.poll() is None:
            p.kill()
            p.wait()
    ended = {rank: p.returncode for rank, p in enumerate(ranks)}
    assert set(ended.values()) == {0}, "\n".join(f"rank {rank} ended with {code}:\n{(logs / f'rank{rank}.log').read_text()[-2000:]}"
                                                for rank, code in ended.items() if code)


@pytest.fixture(scope="module")
def two_ranks(prepared) -> dict[str, list[dict]]:
    """What each of 2 gloo ranks returns for each of JOBS: its weights and history."""
    out = prepared.parent
    script = out / "rank.py"
    script.write_text(RANK)
    jobs = {name: (model, settings, asdict(config)) for name, (model, settings, config) in JOBS.items()}
    start_ranks(2, [str(script), str(prepared), json.dumps(jobs), str(out)], out)
    return {name: [torch.load(out / f"{name}-rank{rank}.pt") for rank in range(2)] for name in jobs}


def test_more_gpus_than_are_visible_are_refused_and_a_rank_bound_to_one_gpu_takes_it(monkeypatch):
    from imgpipe.training import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [distributed.device_count(devices, "cuda") for devices in ("auto", 1, 2, 4)] == [2, 1, 2, 4]
    distributed.require_visible(2, "cuda")
    with pytest.raises(InvalidSetting, match=r"^devices: 4 processes, one per GPU, but 2 GPUs visible"):
        distributed.require_visible(4, "cuda")
    distributed.require_visible(4, "cpu")  # gloo processes on the CPU
    distributed.require_visible(1, "mps")
    with pytest.raises(InvalidSetting, match=r"^devices: 2 processes on mps: several processes train on CUDA GPUs or the CPU"):
        distributed.require_visible(2, "mps")  # no collective backend: every rank's first all-reduce would fail
    assert [distributed.cuda_index(rank) for rank in range(2)] == [0, 1]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task 1: each task sees its own as cuda:0
    assert distributed.cuda_index(3) == 0


def test_srun_s_tasks_are_ranks_and_an_sbatch_script_s_shell_is_not(monkeypatch):
    """README's SLURM recipe exports MASTER_ADDR in the batch script, whose shell also has SLURM_PROCID 0 and the
    job's task count: a stage run there must not wait for ranks that no srun started."""
    from imgpipe.training import distributed

    for key in ("RANK", "WORLD_SIZE", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "node1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert not distributed.launched()  # the batch script's shell: no job step
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # a task of `srun ... python stages/train.py`
    assert distributed.launched()
    monkeypatch.delenv("SLURM_STEP_ID")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's worker
    assert distributed.launched()


def test_a_batch_is_shared_out_whole_and_in_order():
    for count in (45, 7, 1):
        parts = [ProcessGroup(rank, 3).share(count) for rank in range(3)]
        assert [i for part in parts for i in range(count)[part]] == list(range(count))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_two_gloo_processes_train_the_weights_one_process_trains(prepared, two_ranks, digits_prepared):
    model, settings, config = JOBS["mlp"]
    single = train(model, settings, load_prepared(prepared), config)
    ranks = two_ranks["mlp"][0]
    assert ranks["world"] == 2
    # Each rank trained on its share of every batch (batches of config.batch_size split in two), and says so.
    batches = [min(config.batch_size, len(digits_prepared.train) - start) for start in range(0, len(digits_prepared.train), config.batch_size)]
    assert ranks["images_per_rank"] == [sum(-(-b // 2) for b in batches), sum(b // 2 for b in batches)]
    assert single.images_per_rank == [len(digits_prepared.train)]
    for name, weight in single.model.state_dict().items():
        torch.testing.assert_close(ranks["weights"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert len(ranks["history"]) == len(single.history) == config.epochs
    for one, two in zip(single.history, ranks["history"]):
        assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=1 / 270)  # at most one image apart
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


def test_two_gloo_processes_cut_out_and_step_filters_by_muon_as_one_process_does(prepared, two_ranks):
    """Each rank cuts out its rows' squares from the whole batch's draws, and Muon orthogonalizes the all-reduced
    gradients: the same weights as one process."""
    model, settings, config = JOBS["muon_cutout"]
    single = train(model, settings, load_prepared(prepared), config)
    ranks = two_ranks["muon_cutout"]
    for name, weight in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name


def test_two_ranks_killed_and_resumed_end_on_the_weights_of_an_uninterrupted_run(two_ranks):
    """Each rank saves and takes back its own random generators (its dropout masks): resumed with rank 0's, rank 1 drew
    other masks than the run that was not interrupted."""
    resumed, uninterrupted = two_ranks["dropout_resumed"][0], two_ranks["dropout"][0]
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    assert [rank["resumed"] for rank in two_ranks["dropout_resumed"]] == [[1], [1]]  # both took up the saved state
    for name, weight in uninterrupted["weights"].items():
        assert torch.equal(resumed["weights"][name], weight), name


def test_without_re_estimation_every_rank_validates_with_rank_0_s_batch_norm_statistics(two_ranks):
    """bn_images: 0 keeps the statistics training gathered; each rank's last step updated its own from its share, and
    the val figures (which choose the kept epoch) summed a mix of models. Rank 0's are the checkpoint's."""
    first, second = (rank["weights"] for rank in two_ranks["batch_norm_as_trained"])
    statistics = [name for name in first if name.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(first[name], second[name]) for name in statistics)


def test_each_rank_draws_its_own_dropout_masks(two_ranks):
    """The first batch's shares are equal (22 images each): with one seed on every rank, row i of each share had the
    same mask, the noise repeated across the ranks."""
    (live, dropped), (other_live, other_dropped) = (rank["mask"] for rank in two_ranks["dropout"])
    drawn = [a != b for a, b, both in zip(dropped, other_dropped, map(all, zip(live, other_live))) if both]
    assert len(live) == len(other_live) and len(drawn) > 100
    assert 0.35 < sum(drawn) / len(drawn) < 0.65  # apart about half the time, as independent draws at p 0.5 are


def test_reestimated_batch_norm_statistics_are_equal_on_every_rank_and_those_of_the_whole_sample(
        prepared, two_ranks, digits_prepared):
    """Each rank re-estimates on its share of the sample; the averages are averaged across the ranks: every rank holds
    the same statistics, and they are those one process finds for the same weights on whole batches (not exactly: the
    shares of 23 and 22 images weigh alike, and a share's variance misses the difference between the shares' means)."""
    ranks = two_ranks["batch_norm"]
    statistics = [name for name in ranks[0]["weights"] if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 4  # two batch norms in the block
    for name in statistics:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
    model, settings, config = JOBS["batch_norm"]
    one = train(model, settings, load_prepared(prepared), replace(config, bn_images=0)).model  # the network, in one process
    one.load_state_dict(ranks[0]["weights"])
    assert reestimate(one, torch.from_numpy(digits_prepared.train.images).split(config.batch_size)) > 0
    for name in statistics:
        torch.testing.assert_close(ranks[0]["weights"][name], one.state_dict()[name], rtol=0.05, atol=0.01, msg=name)


def test_parallel_trainings_each_take_a_free_gpu(tmp_path):
    """A fake machine of two GPUs: two trainings get one each, a third waits until one is free."""
    from imgpipe.training import gpus

    said = []

    class Waiting(Exception):
        pass

    def say(message):
        said.append(message)
        raise Waiting  # stop the test's third claim where a real one would wait

    try:
        assert gpus.claim(["GPU-a", "GPU-b"], folder=tmp_path) == "GPU-a"
        assert gpus.claim(["GPU-a", "GPU-b"], folder=tmp_path) == "GPU-b"  # the first is held
        with pytest.raises(Waiting):
            gpus.claim(["GPU-a", "GPU-b"], folder=tmp_path, say=say)
        assert said == ["every GPU (GPU-a, GPU-b) is in use by another training; waiting for one to be free"]
        other = subprocess.run([sys.executable, "-c", f"from pathlib import Path; from imgpipe.training import gpus; "
                                f"print(gpus.claim(['GPU-a', 'GPU-b', 'GPU-c'], folder=Path({str(tmp_path)!r})))"],
                               capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "GPU-c"  # another process sees this one's locks
    finally:
        gpus.release_all()
    assert gpus.claim(["GPU-a", "GPU-b"], folder=tmp_path) == "GPU-a"  # released: free again
    gpus.release_all()
