"""The command line: stages listed in pipeline order, helpful errors, and the no-Prefect fallback."""

import importlib.util
import subprocess
import sys

import pytest

from notbugs.cli import STAGES, build_parser, main
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


def test_bad_parameters_exit_2_before_any_work(tmp_path, mirror, capsys):
    from tests.conftest import write_params

    path = write_params(tmp_path / "p.yaml", mirror, tmp_path / "data" / "cifar10",
                        edit=lambda d: d["profiles"]["tiny"]["evaluate"].update(stepz=3))
    assert main(["fetch", "--params", str(path), "--data-dir", str(tmp_path / "data")]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_missing_inputs_give_a_clear_error(tmp_path, params_file, capsys):
    assert main(["construct", "d_det", "--params", str(params_file), "--data-dir", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "meta.json is missing" in err


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


def test_all_skips_finished_steps_so_consecutive_jobs_resume(tmp_path, mirror):
    """A profile run as several capped jobs: each `notbugs all` does only what is not done yet, and a
    finished step's rows are not appended twice."""
    from notbugs import results
    from tests.conftest import write_params

    path = write_params(tmp_path / "p.yaml", mirror, tmp_path / "data" / "cifar10",
                        edit=lambda d: d["profiles"]["tiny"]["transfer"].update(archs=["resnet9"]))
    data = tmp_path / "data"
    common = ["--params", str(path), "--data-dir", str(data), "--device", "cpu"]
    # job 1 ends after the constructed sets (as if its time ran out there)
    assert main(["all", *common, "--skip", "train", "--skip", "transfer", "--skip", "report"]) == 0
    first = results.summary(data / "results")
    assert first["runs"] == 1 + 2 + 4 and first["models"] == 2 and first["datasets"] == 4
    # job 2 does the rest, and only the rest
    assert main(["all", *common]) == 0
    second = results.summary(data / "results")
    assert second["runs"] == first["runs"] + 4 + 1 + 1  # train x4, transfer, report
    assert second["models"] == 2 + 4 + 1 and second["datasets"] == 4
    # job 3 finds everything done: only the report is rendered again
    assert main(["all", *common]) == 0
    assert results.summary(data / "results") == {**second, "runs": second["runs"] + 1}
    # --redo reruns a step even though it is done
    assert main(["all", *common, "--redo", "--skip", "fetch", "--skip", "construct", "--skip", "train",
                 "--skip", "transfer", "--skip", "report"]) == 0
    assert results.summary(data / "results")["models"] == second["models"] + 2
