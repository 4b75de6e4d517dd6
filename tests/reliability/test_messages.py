"""Messages that tell the user what to do: Ctrl-C, unknown options and config keys, a bad
--device, an output folder that cannot be written. One short line each, no traceback."""
from __future__ import annotations

import stat

import pytest

import run_fitting
from single_view import fit as single_view_fit


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_a_fit_says_where_the_checkpoint_is(scene, tmp_path, fit_args, monkeypatch, capsys):
    monkeypatch.setattr("fitting.run.stage_geometry", _interrupt)  # after init's checkpoint
    assert run_fitting.main(fit_args(scene, tmp_path / "out")) == 130
    err = capsys.readouterr().err.strip()
    ckpt = tmp_path / "out" / "tiny" / "checkpoint.pt"
    assert err == f"interrupted; checkpoint at {ckpt}; rerun with --resume true to continue"
    assert ckpt.is_file() and not list((tmp_path / "out").glob(".tiny.*"))  # lock released


def test_ctrl_c_in_a_single_view_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("single_view.batch.list_inputs", _interrupt)
    assert single_view_fit.main([str(tmp_path / "photo.png"), "--savefolder", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted;") and "rerun the same command" in err and err.count("\n") == 1


def test_ctrl_c_in_preprocessing(tmp_path, monkeypatch, capsys):
    from process_data.__main__ import main
    monkeypatch.setattr("process_data.__main__.run_all", _interrupt)
    assert main([str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted; finished stages are kept" in err and err.count("\n") == 1


def test_unknown_config_key_names_the_file_line_and_closest_option(tmp_path, capsys):
    cfg = tmp_path / "my.txt"
    cfg.write_text("# my scene\nscene_dir = scene\n\nphoto_iter = 10\n")
    with pytest.raises(SystemExit) as e:
        run_fitting.main(["--config", str(cfg)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{cfg}:4: unknown option 'photo_iter'; did you mean photo_iters?" in err
    assert err.count("\n") == 1  # not the usage of every option


def test_unknown_command_line_option_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        run_fitting.main(["--scene_dir", "x", "--save_folder", "out"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option --save_folder; did you mean --savefolder?" in err and err.count("\n") == 1


@pytest.mark.parametrize("device, expected", [
    ("gpu", "--device 'gpu' is not a device: give auto, cpu, cuda or cuda:N"),
    ("cuda:99", "cuda:99"),
])
def test_bad_device_is_a_message(device, expected, capsys):
    assert run_fitting.main(["--scene_dir", "x", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_read_only_savefolder_names_the_folder_and_the_fix(tmp_path, capsys):
    save = tmp_path / "save"
    save.mkdir(mode=0o555)  # read-only by its mode bits (os.access alone says yes to root)
    assert run_fitting.main(["--scene_dir", str(tmp_path / "scene"), "--savefolder", str(save)]) == 2
    err = capsys.readouterr().err
    assert f"{save} is read-only; give a writable --savefolder" in err


def test_process_data_on_a_read_only_scene_suggests_out(tmp_path, capsys):
    from process_data.__main__ import main
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    scene.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    assert main([str(scene)]) == 2
    assert "read-only: give --out DIR" in capsys.readouterr().err
    assert [p.name for p in scene.iterdir()] == ["images"]
