"""index.html (opened in headless Chromium), heat maps, turntable, losses.png, overlays and
the end-of-run summary, on the shared small fit (conftest.py)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_index_is_self_contained(fit):
    _, out, _, _ = fit
    page = (out / "index.html").read_text()
    assert "<script src=" not in page and "<link " not in page       # nothing fetched
    # no element loads anything from the network (plotly.js itself holds link strings)
    assert not re.search(r"""<(img|script|link|iframe|source)\b[^>]*\b(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert page.count("data:image/jpeg;base64,") >= 5 * 4               # 5 panels per view, 4 views
    for name in ("view_00.png", "view_01.png", "view_02.png", "view_03.png"):
        assert name in page
    assert "Plotly.newPlot" in page and "Mesh3d" in page.replace("mesh3d", "Mesh3d")


def test_index_shows_the_summary_warnings(fit, tmp_path):
    """A fit whose geometry solve stopped short says so on its page, as in the summary."""
    from fitting.viewer import write_viewer
    _, out, _, _ = fit
    copy = tmp_path / out.name
    shutil.copytree(out, copy)
    details = json.loads((copy / "fit_details.json").read_text())
    assert "stopped before its optimum" not in (copy / "index.html").read_text()
    details["geometry_convergence"] = {"converged": False, "step_sigma_max": 2.5, "worst": "focal length",
                                       "views": [], "focal_step_pct": 4.0, "focal_step_sigma": 2.5}
    (copy / "fit_details.json").write_text(json.dumps(details))
    page = write_viewer(copy, turntable=False).read_text()
    assert "the geometry solve stopped before its optimum" in page and "--geom_lm_iters" in page


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package 'chromium') is not installed")
def test_index_renders_in_chromium(fit, tmp_path):
    """The page renders in headless Chromium without console errors, plotly builds its WebGL
    scene, and a screenshot is written (the README links one of the demo)."""
    _, out, _, _ = fit
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
            "--hide-scrollbars", "--window-size=1280,1600", "--virtual-time-budget=8000",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "index.html").as_uri()
    dom = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "gl-container" in dom.stdout and "main-svg" in dom.stdout, "plotly did not build the 3D view"
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    errors = [ln for ln in console if re.search(r"Uncaught|TypeError|ReferenceError|SyntaxError|Failed to load", ln)]
    assert not errors, "\n".join(errors)
    shot = tmp_path / "index.png"
    r = subprocess.run(args + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (1600, 1280) and img.std() > 20          # not a blank page


def test_heatmaps_turntable_orbit(fit):
    report, out, _, _ = fit
    used = [v["name"] for v in report["views"] if v["used"]]
    assert sorted(p.stem for p in (out / "heatmaps").glob("*.png")) == sorted(n.rsplit(".", 1)[0] for n in used)
    with Image.open(out / "turntable.gif") as g:
        assert g.n_frames == 36 and g.size == (320, 320)
    with Image.open(out / "orbit.gif") as g:
        assert g.n_frames > len(used)
    # the overlays: photo | render | blend, side by side
    with Image.open(out / "overlays" / "view_00.png") as ov:
        assert ov.size[0] == 3 * (ov.size[0] // 3) and ov.size[0] > 2 * ov.size[1]


def test_losses_damping_gets_its_own_panel(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from fitting.visualize import plot_losses
    hist = {"geometry": [{"round": 0, "iter": i, "landmark": 10.0 ** -i, "rim": 0.0, "lambda": 1e-3 / (i + 1)}
                         for i in range(5)],
            "photometric": [{"iter": i, "photometric": 0.02, "total": 0.03} for i in range(5)]}
    seen = []
    real = plt.subplots

    def spy(*a, **k):
        fig, axes = real(*a, **k)
        seen.append(axes)
        return fig, axes
    plt.subplots = spy
    try:
        plot_losses(hist, tmp_path / "losses.png")
    finally:
        plt.subplots = real
    axes = list(seen[0][0])
    titles = [ax.get_title() for ax in axes]
    assert titles == ["geometry", "photometric", "geometry: LM damping"]
    geo, photo, damp = axes
    assert [ln.get_label() for ln in geo.get_lines()] == ["landmark"]      # lambda and an all-zero term left out
    assert geo.get_yscale() == "log" and photo.get_yscale() == "linear"    # log only where it spans decades
    assert "px^2" in geo.get_ylabel() and damp.get_yscale() == "log"


def test_summary_names_worst_view_and_outputs(fit):
    from fitting.viewer import summary_lines
    report, out, _, _ = fit
    text = "\n".join(summary_lines(report, out))
    worst = max((v for v in report["views"] if v["used"]), key=lambda v: v["landmark_rmse_px"])
    assert f"Result: {out}" in text and "index.html" in text and "exports: colmap deca" in text
    assert f"({worst['name']})" in text.split("landmark RMSE")[1].splitlines()[0]
    assert "mask IoU" in text and "flagged views: none" in text
    assert "focal length:" in text and "(held)" in text                 # the demo's K is known
    conv = json.loads((out / "fit_details.json").read_text())["geometry_convergence"]
    assert conv["converged"] and "stopped before its optimum" not in text, conv


def test_summary_states_the_focal_length_and_warns_when_it_is_loose():
    """The summary's focal line: held, refined, and refined but loose (the real sample's 8 views
    fitted by their landmarks alone: sigma 20 %), which says what to give."""
    from fitting.viewer import FOCAL_SIGMA_WARN_PCT, focal_line
    assert focal_line(1228.8, False, None) == "  focal length: 1228.8 px (held)"
    guess = focal_line(970.3, False, None, "fov")           # one view: auto keeps the --fov fallback
    assert guess.startswith("  focal length: 970.3 px (held); warning") and "EXIF" in guess
    assert focal_line(1228.8, True, None) == "  focal length: 1228.8 px (refined)"     # --cameras: no sigma
    assert "warning" not in focal_line(2679.4, True, 5.0) and "sigma 5.0 %" in focal_line(2679.4, True, 5.0)
    loose = focal_line(3841.4, True, 19.9)
    assert 19.9 > FOCAL_SIGMA_WARN_PCT and "warning" in loose and "--cameras" in loose and "EXIF" in loose


def test_summary_warns_when_the_geometry_solve_stopped_short():
    """The warning names what one more step would move most, by how much, and what to do."""
    from fitting.viewer import convergence_warning
    view = {"name": "view29.jpg", "rotation_step_deg": 0.118, "rotation_step_sigma": 4.39, "center_step_mm": 21.3,
            "center_step_sigma": 1.2}
    conv = {"converged": False, "step_sigma_max": 4.39, "worst": "view29.jpg", "views": [None, view],
            "focal_step_pct": 3.97, "focal_step_sigma": 0.8}
    line = convergence_warning(conv)
    assert "view29.jpg by 0.12 deg / 21.3 mm" in line and "4.4 standard errors" in line
    assert "--geom_lm_iters" in line
    line = convergence_warning({**conv, "worst": "focal length", "step_sigma_max": 2.5})
    assert "the focal length by +4.0 %" in line and "2.5 standard errors" in line


def test_summary_warnings_are_the_summary_lines_that_warn(tmp_path):
    """What the page and a sequence's identity show: each warning of the summary, nothing else."""
    from fitting.viewer import summary_warnings
    report = {"views": [{"name": "a.jpg", "used": True, "K": [[3841.4, 0, 260], [0, 3841.4, 348], [0, 0, 1]],
                         "landmark_rmse_px": 3.0}],
              "uncertainty": {"focal_sigma_pct": 19.9}, "flagged_views": [],
              "tracks": {"used": False, "why_unused": "fit with --geom_rounds 2"}}
    details = {"focal": {"refined": True},
               "geometry_convergence": {"converged": False, "step_sigma_max": 3.0, "worst": "focal length",
                                        "views": [], "focal_step_pct": 5.0, "focal_step_sigma": 3.0}}
    (tmp_path / "fit_details.json").write_text(json.dumps(details))
    w = summary_warnings(report, tmp_path)
    assert len(w) == 3 and w[0].startswith("focal length: 3841.4 px") and "stopped before its optimum" in w[1]
    assert "--geom_rounds 2" in w[2] and all("warning:" in line for line in w)
    details["geometry_convergence"]["converged"] = True
    (tmp_path / "fit_details.json").write_text(json.dumps(details))
    report["uncertainty"]["focal_sigma_pct"], report["tracks"]["used"] = 5.0, True
    assert summary_warnings(report, tmp_path) == []


def test_summary_landmark_rmse_leaves_out_the_landmarks_the_fit_did_not_use(tmp_path):
    """A profile's detector points, left out of the fit, sit far from it: the summary's landmark
    RMSE is over the views whose landmarks were used, and names those that were not."""
    from fitting.viewer import summary_lines
    report = {"views": [{"name": "front.jpg", "used": True, "landmark_rmse_px": 1.5, "landmarks_used": True},
                        {"name": "side.jpg", "used": True, "landmark_rmse_px": 40.0, "landmarks_used": False}]}
    line = next(x for x in summary_lines(report, tmp_path) if "landmark RMSE" in x)
    assert "mean 1.500 px, worst 1.500 px (front.jpg)" in line
    assert "(not side.jpg: report.json landmarks_not_used says why)" in line


def test_boolean_options_accept_the_bare_flag():
    from fitting.config import build_parser
    a = build_parser().parse_args(["--scene_dir", "x", "--resume", "--progress", "false", "--demo"])
    assert a.resume is True and a.progress is False and a.demo is True and a.write_images is True


def test_process_data_flags_use_underscores_and_keep_the_old_spelling():
    from process_data.__main__ import build_parser
    p = build_parser()
    a = p.parse_args(["scene", "--pad_mode", "crop", "--no_progress", "--sfm-max-size", "800"])
    assert (a.pad_mode, a.no_progress, a.sfm_max_size) == ("crop", True, 800)
    for act in p._actions:
        assert act.help, f"{act.option_strings} has no help line"
        longs = [s for s in act.option_strings if s.startswith("--")]
        assert not longs or "-" not in longs[0][2:], f"{longs[0]}: underscores, as run_fitting.py"
