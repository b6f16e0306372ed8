"""The command line: stages listed in pipeline order, helpful errors, and the no-Prefect fallback."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from notbugs import construct as C
from notbugs.cli import STAGES, build_parser, main
from notbugs.steps import STEPS
from notbugs.config import DATASETS, load_params
from notbugs.sets import SETS
from tests.conftest import ROOT


def test_help_lists_the_stages_in_pipeline_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    positions = [text.index(f"\n  {name} ") for name, _ in STAGES]
    assert positions == sorted(positions)
    assert [n for n, _ in STAGES][:6] == ["fetch", "source", "construct", "train", "transfer", "report"]


def test_every_subcommand_has_help(capsys):
    for name, _ in STAGES:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0
        assert "--profile" in capsys.readouterr().out


def test_wrong_argument_says_what_is_accepted(capsys):
    with pytest.raises(SystemExit) as e:
        main(["construct", "d_robust"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'd_robust'" in err and "d_r" in err and "d_det" in err
    with pytest.raises(SystemExit):
        main(["all", "--time-limit", "abc"])
    assert "'abc' is not a number of minutes >= 0" in capsys.readouterr().err


def test_bad_parameters_exit_2_before_any_work(tmp_path, mirror, capsys):
    from tests.conftest import write_params

    path = write_params(tmp_path / "p.yaml", mirror,
                        edit=lambda d: d["profiles"]["tiny"]["evaluate"].update(stepz=3))
    assert main(["fetch", "--params", str(path), "--data-dir", str(tmp_path / "data")]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_missing_inputs_give_a_clear_error(tmp_path, params_file, capsys):
    assert main(["construct", "d_det", "--params", str(params_file), "--data-dir", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "holds no trained model (no meta.json)" in err and "notbugs source standard" in err  # and how to make it


def test_flows_entry_falls_back_to_the_library_without_prefect(tmp_path, params_file, monkeypatch, capsys):
    from flows.__main__ import main as flows_main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prefect" else real(name, *a))
    assert flows_main(["fetch", "--params", str(params_file), "--data-dir", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    assert "prefect is not installed" in captured.err
    assert (tmp_path / "data" / "cifar10" / "manifest.json").exists()


def test_library_does_not_import_prefect_or_dvc():
    code = ("import sys, notbugs.cli, notbugs.stages, notbugs.report, notbugs.results\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'dvc')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_all_skips_finished_steps_so_consecutive_jobs_resume(tmp_path, mirror, monkeypatch):
    """A profile run as several capped jobs: each `notbugs all` does only what is not done yet, and a
    finished step's rows are not appended twice. Each job reads the data once, whatever it runs."""
    from notbugs import results
    from notbugs import stages as S
    from notbugs import units as U
    from tests.conftest import write_params

    loads = []
    real_load_split = U.load_split

    def counted(*a):
        return loads.append(1) or real_load_split(*a)

    monkeypatch.setattr(U, "load_split", counted)  # where run_all reads it once for every stage
    monkeypatch.setattr(S, "load_split", counted)  # and where a stage would read it again itself

    path = write_params(tmp_path / "p.yaml", mirror,
                        edit=lambda d: d["profiles"]["tiny"]["transfer"].update(archs=["resnet9"]))
    data = tmp_path / "data"
    common = ["--params", str(path), "--data-dir", str(data), "--device", "cpu"]
    # job 1 ends after the constructed sets (as if its time ran out there)
    assert main(["all", *common, "--skip", "train", "--skip", "transfer", "--skip", "report"]) == 0
    first = results.summary(data / "results")
    sets = len(DATASETS)
    assert first["runs"] == 1 + 2 + sets and first["models"] == 2 and first["datasets"] == 1 + sets  # D and each set
    assert len(loads) == 1  # for two source models and every constructed set
    # job 2 does the rest, and only the rest
    assert main(["all", *common]) == 0
    second = results.summary(data / "results")
    assert second["runs"] == first["runs"] + sets + 1 + 1  # train on each set, transfer, report
    transfer_models = len(S.transfer_to_train(load_params(path)))  # D, and D_det but for its own architecture
    assert second["models"] == 2 + sets + transfer_models and second["datasets"] == 1 + sets
    assert len(loads) == 2
    # job 3 finds everything done: only the report is rendered again
    assert main(["all", *common]) == 0
    assert results.summary(data / "results") == {**second, "runs": second["runs"] + 1}
    assert len(loads) == 2  # nothing to train: the data is not read
    # --redo reruns a step even though it is done
    assert main(["all", *common, "--redo", "--skip", "fetch", "--skip", "construct", "--skip", "train",
                 "--skip", "transfer", "--skip", "report"]) == 0
    assert results.summary(data / "results")["models"] == second["models"] + 2
    import shutil

    def ran(*args: str) -> list[str]:  # the stages `notbugs all` ran
        before = results.load("runs", data / "results")
        assert main(["all", *common, *args]) == 0
        runs = results.load("runs", data / "results")
        return sorted(runs[~runs["run_id"].isin(before["run_id"])]["stage"])

    # outputs deleted by hand: the steps that made them run again (the marker alone would skip them), and the
    # arrays and the set, made again bit-identically, rerun none of the steps that read them
    shutil.rmtree(data / "models" / "d_r")
    (data / "datasets" / "d_nr" / "shard-00000.npz").unlink()
    (data / "cifar10" / "test_images.npy").unlink()
    shutil.rmtree(data / "models" / "transfer")
    assert ran() == ["construct@d_nr", "fetch", "report", "train@d_r", "transfer"]
    # a stage run on its own with other parameters (a per-stage deployment, say) remakes the standard model and
    # leaves its marker: `notbugs all` runs that step again, which takes up this recipe's finished checkpoint (the
    # same weights back), and the steps after it find what they read as it was
    standard = data / "models" / "standard"
    original = json.loads((standard / "meta.json").read_text())["checkpoint_sha256"]
    other = write_params(tmp_path / "other.yaml", mirror, edit=lambda d: d["profiles"]["tiny"]["source_on"].update(
        standard={"epochs": 1}))
    assert main(["source", "standard", "--params", str(other), "--data-dir", str(data), "--device", "cpu"]) == 0
    shutil.copytree(standard, tmp_path / "other-standard")
    assert ran() == ["report", "source@standard"]
    assert json.loads((standard / "meta.json").read_text())["checkpoint_sha256"] == original
    # the other model put back without running its step (as `dvc checkout` or DVC's run cache do): the same
    shutil.rmtree(standard)
    shutil.copytree(tmp_path / "other-standard", standard)
    assert ran() == ["report", "source@standard"]
    assert json.loads((standard / "meta.json").read_text())["checkpoint_sha256"] == original
    # the same recipe's model with other weights (another machine's run, brought by `dvc pull`; here its head's
    # bias moved): kept as it is; the steps that read the standard model see it and run again, but for D_NR's
    # training: D_NR matches the representation, which the head does not touch, so it comes out bit-identical.
    # D_R's steps, from the robust model, do not run
    from notbugs.train import load_model, save_model

    model, meta = load_model(standard)
    with torch.no_grad():
        model.head.bias.add_(0.01)
    pulled = save_model(model, standard, {k: meta[k] for k in ("model_id", "profile", "train_set", "training",
                                                                "recipe", "run_id", "rebuild")})
    assert pulled["checkpoint_sha256"] != original
    from_standard = [n for n, s in SETS.items() if s.source == "standard"]
    assert ran() == sorted([*(f"construct@{n}" for n in from_standard),
                            *(f"train@{n}" for n in from_standard if SETS[n].kind != "match"), "transfer", "report"])
    assert json.loads((standard / "meta.json").read_text())["checkpoint_sha256"] == pulled["checkpoint_sha256"]


def test_a_step_run_on_its_own_is_skipped_by_all(tmp_path, mirror):
    """`notbugs fetch` and `notbugs source standard` (what a DVC stage or a deployment runs) leave their markers,
    so `notbugs all` then runs only the rest; a step stopped by its time limit, or failed, leaves none."""
    from notbugs import results
    from tests.conftest import write_params

    path = write_params(tmp_path / "p.yaml", mirror)
    data = tmp_path / "data"
    common = ["--params", str(path), "--data-dir", str(data), "--device", "cpu"]
    assert main(["fetch", *common]) == 0 and main(["source", "standard", *common]) == 0
    assert main(["source", "robust", *common, "--time-limit", "0"]) == 75  # stopped after its first batch
    assert main(["train", "d_r", *common]) == 1  # failed: D_R is not built
    assert sorted(p.stem for p in (data / "work" / "done").glob("*.json")) == ["fetch", "source@standard"]
    before = results.load("runs", data / "results")
    assert main(["all", *common, "--skip", "construct", "--skip", "train", "--skip", "transfer",
                 "--skip", "report"]) == 0
    runs = results.load("runs", data / "results")
    assert list(runs[~runs["run_id"].isin(before["run_id"])]["stage"]) == ["source@robust"]


def test_a_second_all_on_the_same_data_folder_is_refused(tmp_path, params_file, capsys):
    """Two at once would each run every step, and append every row twice: the second says who holds the folder."""
    from notbugs.record import exclusive

    data = tmp_path / "data"
    with exclusive(data / "work" / "all.lock", "a test"):
        assert main(["all", "--params", str(params_file), "--data-dir", str(data), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "`notbugs all` (or the flow `reproduce`) on this data folder is already running (pid" in err
    assert not (data / "cifar10").exists() and not (data / "results").exists()  # nothing started


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """NFS without lockd or Lustre without -o flock refuse flock: the work runs, with a warning, rather than not
    at all; other errors are not hidden."""
    import errno
    import fcntl

    from notbugs.record import exclusive

    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level("WARNING", logger="notbugs"):
        with exclusive(tmp_path / "all.lock", "the test's work"):
            ran.append(1)
    assert ran == [1] and "the test's work:" in caplog.text and "running without the lock" in caplog.text

    def broken(f, how):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        with exclusive(tmp_path / "all.lock", "the test's work"):
            pass


def test_all_reruns_only_the_steps_a_changed_parameter_reaches(tmp_path, mirror, monkeypatch):
    """As `dvc repro` does: a new transfer recipe reruns transfer alone; a new PGD recipe for the
    constructed sets reruns D_rand and D_det, what is trained on them, and transfer (D_det's own, D_det alone
    of them); the steps left
    alone score no model again. New construction code reruns every construction and what follows. New
    fetch code reruns fetch, and what follows only where the arrays it writes change."""
    import yaml

    from notbugs import results, steps
    from tests.conftest import write_params

    def tiny(d):
        d["profiles"]["tiny"]["transfer"].update(archs=["resnet9"])

    path = write_params(tmp_path / "p.yaml", mirror, edit=tiny)
    data = tmp_path / "data"
    common = ["--params", str(path), "--data-dir", str(data), "--device", "cpu", "--skip", "report"]

    def ran_after(edit) -> list[str]:
        before = set(results.load("runs", data / "results")["run_id"])
        doc = yaml.safe_load(path.read_text())
        edit(doc["profiles"]["tiny"])
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert main(["all", *common]) == 0
        runs = results.load("runs", data / "results")  # rows in part-file order, not in time order
        return sorted(runs["stage"][~runs["run_id"].isin(before)])

    def scored() -> list[str]:  # the models of Figure 2 and Table 1 (transfer scores its own)
        ids = results.load("evaluations", data / "results")["model_id"]
        return sorted(i for i in ids if "/transfer/" not in i)

    assert main(["all", *common]) == 0
    first = scored()
    assert ran_after(lambda prof: prof["transfer"].update(n=50)) == ["transfer"]
    assert scored() == first  # none scored twice
    pgd_sets = [n for n, s in SETS.items() if s.kind == "pgd"]
    assert ran_after(lambda prof: prof["construct"]["pgd"].update(steps=6)) == sorted(
        [*(f"{stage}@{n}" for stage in ("construct", "train") for n in pgd_sets), "transfer"])
    assert ran_after(lambda prof: prof["construct"]["pgd"].update(steps=6)) == []  # nothing changed
    # one set's own parameters: that set, what trains on it and (D_det's) transfer; restated values nothing
    assert ran_after(lambda prof: prof["construct_on"].update(d_det={"eps": 0.55})) == [
        "construct@d_det", "train@d_det", "transfer"]
    assert ran_after(lambda prof: prof["construct_on"].update(d_det={"eps": 0.55, "steps": 6})) == []
    # more trainees, then fewer: the train steps alone (transfer reads train@d_det's first model, left as it was)
    assert ran_after(lambda prof: prof.update(trainees=2)) == sorted(f"train@{d}" for d in DATASETS)
    assert ran_after(lambda prof: prof.update(trainees=1)) == sorted(f"train@{d}" for d in DATASETS)
    digest, updated = steps.code_digest, {}  # updated: a stand-in code digest per stage whose code changed
    monkeypatch.setattr(steps, "code_digest",
                        lambda params, step: updated.get(step.partition("@")[0]) or digest(params, step))
    updated["construct"] = "new"
    assert ran_after(lambda prof: None) == [*(f"construct@{d}" for d in sorted(DATASETS)),
                                            *(f"train@{d}" for d in sorted(DATASETS)), "transfer"]
    # new fetch code that writes the same arrays reruns fetch alone (the steps after it read the arrays)
    updated["fetch"] = "new"
    assert ran_after(lambda prof: None) == ["fetch"]
    # fetch code that writes other arrays (here: the training images in reverse order) reruns every step
    from notbugs import data as D

    decode = D.decode_mirror
    monkeypatch.setattr(D, "decode_mirror", lambda m: {k: (x[::-1], y[::-1]) if k == "train" else (x, y)
                                                       for k, (x, y) in decode(m).items()})
    updated["fetch"] = "newer"
    assert ran_after(lambda prof: None) == sorted(["fetch", "source@standard", "source@robust", "transfer",
                                                   *(f"{s}@{d}" for s in ("construct", "train") for d in DATASETS)])


def test_an_architecture_edit_reaches_only_the_steps_that_build_it(monkeypatch):
    """Each step's code digest holds the modules of the architectures it builds, and no other's: at `cpu`
    (ResNet-9; transfer to ResNet-9 and VGG-16) an edit to VGG-16 reruns transfer alone, one to DenseNet
    nothing, one to ResNet-9 or to the blocks every architecture shares every step after fetch."""
    from notbugs import steps as S
    from notbugs.config import load_params

    params = load_params(ROOT / "params.yaml", profile="cpu")
    steps = [s for s in STEPS if s != "report"]
    before = {s: S.code_digest(params, s) for s in steps}
    real = S.package_digest

    def edited(module: str) -> set[str]:
        monkeypatch.setattr(S, "package_digest", lambda *names: real(*names) + ("+" if module in names else ""))
        return {s for s in steps if S.code_digest(params, s) != before[s]}

    assert edited("archs/vgg.py") == {"transfer"}
    assert edited("archs/densenet.py") == set()
    assert edited("archs/resnet9.py") == set(steps) - {"fetch"}
    assert edited("layers.py") == set(steps) - {"fetch"}
    assert edited("construct.py") == {f"construct@{n}" for n in DATASETS}
    assert edited("sets.py") == set()  # each construct step hashes its own entry (tests/test_sets.py)


def test_the_steps_of_all_read_what_dvc_yaml_declares():
    """steps.STEP_PARAMS, step_code and upstream_steps against dvc.yaml's params, code and data deps, stage
    by stage. dvc.yaml cannot pick a file by profile: it lists the code of every profile's architectures."""
    import yaml

    from notbugs.steps import STEP_TABLES, step_code, step_params, upstream_steps
    from notbugs.config import PROFILES, load_params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {}
    for stage, body in stages.items():
        if stage == "report":
            continue
        items = body.get("foreach") or {None: None}
        for key, item in (items.items() if isinstance(items, dict) else ((i, i) for i in items)):
            spec, step = body.get("do", body), stage if key is None else f"{stage}@{key}"

            def subst(text, key=key, item=item):
                text = text.replace("${key}", str(key))
                if isinstance(item, dict):
                    for k, v in item.items():
                        text = text.replace("${item." + k + "}", v)
                return text.replace("${item}", str(item))

            keys = [subst(k).removeprefix("profiles.${profile}.") for k in spec.get("params", [])]
            code = sorted(d.removeprefix("notbugs/") for d in spec.get("deps", []) if d.startswith("notbugs/"))
            ups = set()
            for dep in map(subst, spec.get("deps", [])):
                if dep == "data/cifar10":
                    ups.add("fetch")
                elif dep.startswith("data/models/"):
                    name = dep.removeprefix("data/models/").split("/")[0]  # a model's folder or a file in it
                    ups.add(f"source@{name}" if name in ("standard", "robust") else f"train@{name}")
                elif dep.startswith("data/datasets/"):
                    ups.add(f"construct@{dep.removeprefix('data/datasets/')}")
            declared[step] = (sorted(k for k in keys if k not in ("profile", "data")), ups, code)
    # the same steps: a set added to notbugs/sets.py but not to dvc.yaml's foreach lists (or the reverse) would
    # be built by one runner and silently not by the other
    assert set(declared) == set(STEPS) - {"report"}
    profiles = [load_params(ROOT / "params.yaml", profile=name) for name in PROFILES]
    for step, (keys, ups, code) in declared.items():
        # and the table of sets, whose entry (not file) the construct steps hash (steps.STEP_TABLES)
        runs = sorted({f for params in profiles for f in step_code(params, step)}
                      | set(STEP_TABLES.get(step.partition("@")[0], ())))
        assert code == runs, (f"dvc.yaml's {step} deps lack {sorted(set(runs) - set(code))} and have "
                              f"{sorted(set(code) - set(runs))} too many, of the library files it runs in some "
                              f"profile (steps.step_code: README, 'Extending')")
        assert keys == sorted(step_params(step)), f"dvc.yaml's {step} params differ from steps.STEP_PARAMS"
        assert ups == set(upstream_steps(step)), f"dvc.yaml's {step} data deps differ from steps.upstream_steps"
    assert "adversarial" not in step_params("source@standard")  # editing the attack leaves the standard model


def _artefacts(data) -> dict:
    """Checksums of every model and every constructed shard under a data folder."""
    from notbugs.storage import sha256_file
    files = [*data.glob("models/**/model.pt"), *data.glob("datasets/*/shard-*.npz")]
    return {str(p.relative_to(data)): sha256_file(p) for p in files}


def _scores(data) -> dict:
    from notbugs import results
    ev = results.load("evaluations", data / "results")
    return {(r.model_id, r.attack, r.eps): r.accuracy for r in ev.itertuples()}


def test_a_profile_run_as_jobs_cut_after_every_batch_equals_one_run(tmp_path, mirror, capsys):
    """`notbugs all --time-limit 0`: every job does one batch (or one short step), saves it and exits
    75; chained until one exits 0, the jobs make exactly the models, sets and scores of one run."""
    from notbugs import results
    from tests.conftest import write_params

    def edit(d):
        d["profiles"]["tiny"]["transfer"].update(archs=["resnet9"])
        d["profiles"]["tiny"]["train"].update(epochs=1)

    path = write_params(tmp_path / "p.yaml", mirror, edit=edit)
    one = tmp_path / "one"
    assert main(["all", "--params", str(path), "--data-dir", str(one), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)  # the tables' row counts, and where the report went
    assert summary["report"] == str(one / "report" / "report.html") and (one / "report" / "report.html").exists()

    jobs = tmp_path / "jobs"
    codes = []
    while not codes or codes[-1] == 75:
        codes.append(main(["all", "--params", str(path), "--data-dir", str(jobs), "--device", "cpu",
                           "--time-limit", "0"]))
        assert len(codes) < 80, codes
    assert codes[-1] == 0 and len(codes) > 20, codes
    assert "stopped early" in capsys.readouterr().err
    from notbugs import stages as S

    params = load_params(path)
    models = 2 + len(DATASETS) + len(S.transfer_to_train(params))
    shards = len(DATASETS) * len(C.shard_ranges(20 * 10, params.profile.construct.shard_size))  # 20 images a class
    assert _artefacts(jobs) == _artefacts(one) and len(_artefacts(one)) == models + shards
    assert _scores(jobs) == _scores(one)
    runs = results.load("runs", jobs / "results")
    assert set(runs["status"]) == {"ok", "stopped"}
    assert not list(jobs.glob("datasets/*/*.partial.*"))


def test_sigterm_stops_training_at_the_next_batch_and_the_rerun_finishes_it(tmp_path, mirror):
    import signal
    import time

    from tests.conftest import write_params
    from tests.faultkit import ENV, stage_command

    def forty_epochs_no_checkpoint_due(doc):
        doc["profiles"]["tiny"]["train"].update(epochs=40)
        doc["profiles"]["tiny"]["checkpoint_minutes"] = 60

    path = write_params(tmp_path / "p.yaml", mirror, edit=forty_epochs_no_checkpoint_due)
    data = tmp_path / "data"
    assert main(["fetch", "--params", str(path), "--data-dir", str(data)]) == 0
    cmd = stage_command(["source", "standard"], path, data)
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plots = data / "plots"
    t0 = time.monotonic()
    while "epoch 2/40" not in (proc.stderr.readline() or "epoch 2/40"):  # training is under way
        assert time.monotonic() - t0 < 120
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert "SIGTERM received after batch" in err and "run the same command again" in err
    assert (data / "work" / "standard" / "checkpoint.pt").exists() and not plots.exists()
    # the rerun resumes mid-training (no checkpoint was due before epoch 40) and ends the model
    done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert (data / "models" / "standard" / "model.pt").exists()


@pytest.mark.parametrize("name, train_set", [("standard", "d"), ("robust", "d"), *((n, n) for n in DATASETS),
                                             ("transfer/vgg16-d", "d"), ("transfer/vgg16-d_det", "d_det")])
def test_rebuild_hints_name_a_real_dvc_stage_and_cli_command(name, train_set):
    """A corrupt or missing model's error says how to remake it: both commands it gives must exist."""
    import yaml

    from notbugs.units import rebuild_command

    hint = rebuild_command(name, train_set)
    dvc_part, _, cli_part = hint.partition("(or: ")
    stage = dvc_part.split()[2]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    base, _, item = stage.partition("@")
    foreach = stages[base].get("foreach") or {}
    assert (item in foreach) if item else "foreach" not in stages[base], hint
    assert f"{base}@{item}" in STEPS if item else base in STEPS
    build_parser().parse_args(cli_part.rstrip(")").split()[1:])  # exits (SystemExit) on an unknown command


def test_ctrl_c_says_how_to_continue(tmp_path, params_file, monkeypatch, capsys):
    """Ctrl-C ends the command with the shell's exit status for it and the resume hint, not a traceback."""
    from notbugs import stages as S

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "stage_train", interrupted)
    assert main(["train", "d_r", "--params", str(params_file), "--data-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again" in err


def test_every_constructed_set_names_its_source_model():
    """A set's source model is its entry's in notbugs/sets.py; an unknown set is an error, not silently the
    standard model."""
    from notbugs.stages import construct_source

    assert construct_source("d_r") == "robust" and construct_source("d_nr") == "standard"
    with pytest.raises(ValueError, match="notbugs/sets.py"):
        construct_source("d_r2")


def test_clean_deletes_the_set_aside_checkpoints_only(tmp_path, mirror, capsys):
    """`notbugs clean` removes the checkpoints that runs of another recipe set aside, in every model's work
    folder (transfer's are nested), and keeps each run's own checkpoint.pt; --dry-run deletes nothing."""
    from tests.conftest import write_params

    path = write_params(tmp_path / "p.yaml", mirror)
    data = tmp_path / "data"
    files = {"work/standard/checkpoint.pt": 3, "work/standard/checkpoint-0123456789abcdef.pt": 5,
             "work/transfer/vgg16-d/checkpoint-unsigned.pt": 7, "work/transfer/vgg16-d/checkpoint.pt": 11,
             "models/standard/model.pt": 13}
    for name, size in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x" * size)
    aside = sorted(str(data / n) for n in files if "checkpoint-" in n)
    common = ["--params", str(path), "--data-dir", str(data)]

    capsys.readouterr()
    assert main(["clean", "--dry-run", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"would_remove": aside, "bytes": 12}
    assert all((data / n).exists() for n in files)
    assert main(["clean", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": aside, "bytes": 12}
    assert sorted(n for n in files if (data / n).exists()) == sorted(n for n in files if "checkpoint-" not in n)
    assert main(["clean", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": [], "bytes": 0}


def test_all_says_how_to_record_its_run_for_dvc_only_where_dvc_would_describe_it(tmp_path, monkeypatch):
    from notbugs.cli import checkout_digest, dvc_hint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's dvc
    (tmp_path / "params.yaml").write_text("profile: tiny\nprofiles: {}\n")
    (tmp_path / "notbugs").mkdir()
    (tmp_path / "notbugs" / "train.py").write_text("x = 1\n")

    def hint(*argv, profile="tiny", before=None):
        return dvc_hint(build_parser().parse_args(["all", *argv]), profile, before or checkout_digest(tmp_path))

    assert hint() is None  # no dvc.yaml: not a DVC checkout
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert hint() is None  # no .dvc/: not a DVC repository
    (tmp_path / ".dvc").mkdir()
    assert "`dvc commit -f dvc.yaml`" in hint()
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path / "no-bin"))
        assert "`dvc commit -f dvc.yaml`" in hint()  # the venv's own dvc, not activated
        m.setattr(sys, "executable", str(tmp_path / "no-bin" / "python"))
        assert hint() is None  # no dvc command to run (a GPU machine with torch only)
    assert "`dvc commit -f dvc.yaml`" in hint("--data-dir", str(tmp_path / "data"), "--profile", "tiny")
    (tmp_path / "data").mkdir()
    (tmp_path / "data-link").symlink_to(tmp_path / "data")  # another name for the same folder
    assert "`dvc commit -f dvc.yaml`" in hint("--data-dir", "data-link")
    (tmp_path / "data").rmdir()
    scratch = tmp_path.parent / f"{tmp_path.name}-scratch"
    scratch.mkdir()
    (tmp_path / "data").symlink_to(scratch)  # linked outside the checkout: DVC refuses it, nothing to record
    assert hint() is None
    (tmp_path / "data").unlink()
    # dvc.lock would record params.yaml's profile, data folder and every stage: other runs are not DVC's to record
    for argv, profile in (((), "cpu"),  # NOTBUGS_PROFILE chose it
                          (("--profile", "cpu"), "cpu"), (("--data-dir", "other"), "tiny"),
                          (("--params", "other.yaml"), "tiny"), (("--skip", "transfer"), "tiny")):
        assert hint(*argv, profile=profile) is None, argv
    # code edited during the run: committing would pair the new code's hashes with the old code's outputs
    before = checkout_digest(tmp_path)
    (tmp_path / "notbugs" / "train.py").write_text("x = 2\n")
    said = hint(before=before)
    assert "changed while it ran" in said and "dvc commit -f" not in said
    import notbugs.cli

    def unreadable(root):
        raise PermissionError(f"{root}/params.yaml")  # a file gone or unreadable since the run started

    monkeypatch.setattr(notbugs.cli, "checkout_digest", unreadable)
    said = dvc_hint(build_parser().parse_args(["all"]), "tiny", before)
    assert "changed while it ran" in said and "dvc commit -f" not in said


def test_the_report_stage_depends_on_every_library_module_the_report_imports():
    """The report's modules (report*.py) read the tables, the models' and sets' files and sample images through
    other library modules: under `dvc repro` a change to any of them must render the report again."""
    import ast

    import yaml

    deps = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"])
    for path in sorted((ROOT / "notbugs").glob("report*.py")):
        assert f"notbugs/{path.name}" in deps, path.name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "notbugs":
                used = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("notbugs."):
                used = [node.module.split(".")[1]]
            else:
                continue
            for name in used:
                assert f"notbugs/{name}.py" in deps, f"{path.name} imports notbugs.{name}, not in the report's deps"
