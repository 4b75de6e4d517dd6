"""A look at a finished fit: ``index.html``, ``heatmaps/``, ``turntable.gif``, ``orbit.gif``,
and the end-of-run summary on the terminal.

``index.html`` is one self-contained page (plotly.js inlined, images as data URIs, no network):

* an interactive 3D view (plotly) of the textured mesh with every camera's frustum, labelled
  with its view name and coloured by its error (SfM epipolar median when the scene has SfM
  matches, else the landmark RMSE);
* per view: the photo with detected (green) and fitted (red) landmarks, our render, the blend,
  and an error heat map (|photo - render|, colours in [0, 1], inside the render);
* the loss curves (losses.png) and the report table.

Renders come from our renderer at up to ``max_side`` pixels (the photo's resolution when
smaller), through the fitted cameras and per-view SH lighting.
``python -m fitting.viewer OUTPUT_DIR`` rewrites them for an existing fit.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.atomic import atomic_write_bytes
from fitting.export.core import write_png
from fitting.export.source import FitResult, fitted_landmarks, load_fit, project, render_views
from fitting.images import read_image
from fitting.visualize import DETECTED, FITTED, draw_landmarks, error_heatmap, label

__all__ = ["write_viewer", "summary_lines", "summary_warnings", "focal_line", "convergence_warning", "camera_figure",
           "turntable_frames", "orbit_frames"]


def _data_uri(img: np.ndarray, fmt: str = ".jpg") -> str:
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    mime = "jpeg" if fmt == ".jpg" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode()


def _view_error(v: dict) -> tuple[float, str]:
    if v.get("epipolar_px_median") is not None:
        return float(v["epipolar_px_median"]), "epipolar median (px)"
    return float(v.get("landmark_rmse_px") or 0.0), "landmark RMSE (px)"


def _mean_sh(fit: FitResult) -> np.ndarray:
    return np.asarray(fit.params["sh"], np.float64).mean(0)


def camera_figure(fit: FitResult, report: dict | None):
    """plotly Figure: the mesh (vertex colours from the texture) and one labelled frustum per view."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    v, f = fit.verts, fit.faces
    col = None
    if fit.texture is not None and fit.verts_uvs is not None:
        from fitting.export.core import vertex_colors_from_texture
        c = vertex_colors_from_texture(fit.texture.transpose(2, 0, 1), fit.verts_uvs, f, fit.faces_uvs, len(v))
        col = [f"rgb({r},{g},{b})" for r, g, b in c]
    data = [go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], vertexcolor=col,
                      color=None if col else "lightgray", flatshading=False, name="fitted mesh",
                      hoverinfo="skip", lighting=dict(ambient=0.7, diffuse=0.5))]
    rows = {r["name"]: r for r in (report or {}).get("views", [])}
    errs = [_view_error(rows.get(n, {})) for n in fit.names]
    what = errs[0][1] if errs else "error"
    e = np.array([x[0] for x in errs])
    hi = max(float(e.max()) if len(e) else 1.0, 1e-9)
    colours = sample_colorscale("RdYlGn_r", list(np.clip(e / hi, 0, 1)))
    size = 0.35 * float(np.linalg.norm(v.max(0) - v.min(0)))
    for i, n in enumerate(fit.names):
        K, R, t = fit.K[i], fit.R[i], fit.t[i]
        W, H = fit.sizes[i]
        C = -R.T @ t
        corners = np.array([[0, 0, 1], [W, 0, 1], [W, H, 1], [0, H, 1]], np.float64) @ np.linalg.inv(K).T
        corners *= size / max(np.linalg.norm(corners[0]), 1e-9)
        P = corners @ R + C          # camera -> world: R^T x + C
        seq = [C, P[0], P[1], P[2], P[3], P[0], C, P[1], C, P[2], C, P[3]]
        xs, ys, zs = zip(*seq)
        data.append(go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", line=dict(color=colours[i], width=4),
                                 name=n, hoverinfo="name", showlegend=False))
        top = (P[0] + P[1]) / 2      # the image's top edge: a flipped camera shows it below
        data.append(go.Scatter3d(x=[C[0], top[0]], y=[C[1], top[1]], z=[C[2], top[2]], mode="markers+text",
                                 marker=dict(size=[4, 2], color=colours[i]), text=[f"{n} ({e[i]:.2f})", ""],
                                 textposition="top center", hovertext=f"{n}: {what} {e[i]:.3f}",
                                 hoverinfo="text", showlegend=False))
    data.append(go.Scatter3d(x=[None], y=[None], z=[None], mode="markers", showlegend=False,
                             marker=dict(colorscale="RdYlGn_r", cmin=0, cmax=hi, color=[0], showscale=True,
                                         colorbar=dict(title=what, len=0.6))))
    fig = go.Figure(data)
    fig.update_layout(scene=dict(aspectmode="data", xaxis_title="x (m)", yaxis_title="y (m)", zaxis_title="z (m)",
                                 camera=dict(up=dict(x=0, y=1, z=0), eye=dict(x=0.0, y=0.4, z=2.0))),
                      margin=dict(l=0, r=0, t=30, b=0), height=620,
                      title="Fitted head and cameras (frustum colour: per-view error; the dot marks each image's top)")
    return fig


def _scaled(K: np.ndarray, size, max_side: int):
    W, H = (int(x) for x in size)
    s = min(1.0, max_side / max(W, H))
    w, h = max(1, round(W * s)), max(1, round(H * s))
    K2 = K.copy()
    K2[0] *= w / W
    K2[1] *= h / H
    return K2, (w, h), (w / W, h / H)


def _view_panels(fit: FitResult, i: int, lm3: np.ndarray | None, max_side: int):
    """(panels {caption: image}, heat map image, mean colour error) of view i."""
    K2, (w, h), (sx, sy) = _scaled(fit.K[i], fit.sizes[i], max_side)
    photo = cv2.resize(read_image(fit.image_paths[i]), (w, h), interpolation=cv2.INTER_AREA)
    r = render_views(fit, K2[None], fit.R[i:i + 1], fit.t[i:i + 1], (w, h), sh=np.asarray(fit.params["sh"][i:i + 1]))
    rend = (r.image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    a = r.alpha[0, 0].numpy()[..., None].astype(np.float32)
    blend = (0.6 * a * rend + (1 - 0.6 * a) * photo).astype(np.uint8)
    lmk = photo.copy()
    s = np.array([sx, sy])
    det = None if fit.landmarks[i] is None else fit.landmarks[i] * s
    fitted = None if lm3 is None else project(lm3[i], K2, fit.R[i], fit.t[i])
    rad = max(2, round(max(w, h) / 300))
    if fitted is not None:  # fitted: red rings, detected: green dots inside them
        for x, y in fitted - 0.5:
            cv2.circle(lmk, (int(round(x)), int(round(y))), rad + 1, FITTED, 1, cv2.LINE_AA)
    draw_landmarks(lmk, det, DETECTED, radius=max(1, rad - 1))
    heat, err = error_heatmap(photo.transpose(2, 0, 1) / 255.0, rend.transpose(2, 0, 1) / 255.0, a.transpose(2, 0, 1))
    panels = {"photo": photo, "render": rend, "blend": blend,
              "landmarks: detected (green) / fitted (red)": lmk, f"error |photo - render| (mean {err:.3f})": heat}
    return {k: label(v.copy(), k.split(":")[0].split(" (")[0], max(0.4, w / 450)) for k, v in panels.items()}, heat, err


def _orbit_K(fit: FitResult, side: int) -> np.ndarray:
    K = fit.K[0]
    f = K[0, 0] / fit.sizes[0][0] * side
    return np.array([[f, 0, side / 2], [0, f, side / 2], [0, 0, 1]], np.float64)


def _render_path(fit: FitResult, eyes: np.ndarray, side: int) -> list:
    from fitting.render.cameras import look_at
    centre = (fit.verts.max(0) + fit.verts.min(0)) / 2
    eye = torch.as_tensor(eyes, dtype=torch.float64)
    R, t = look_at(eye, torch.as_tensor(centre).expand_as(eye))
    K = np.repeat(_orbit_K(fit, side)[None], len(eyes), 0)
    sh = np.repeat(_mean_sh(fit)[None], len(eyes), 0)
    frames = []
    for a in range(0, len(eyes), 12):  # batches of 12 frames
        r = render_views(fit, K[a:a + 12], R[a:a + 12].numpy(), t[a:a + 12].numpy(), (side, side), sh=sh[a:a + 12])
        img = r.image.clamp(0, 1) + (1 - r.alpha) * 0.12   # dark grey background
        frames += [(x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for x in img]
    return frames


def turntable_frames(fit: FitResult, n: int = 36, side: int = 320) -> list:
    """The textured mesh seen from a full circle around the head's vertical (y) axis, at the
    cameras' mean distance and height: (side, side, 3) uint8 frames."""
    centre = (fit.verts.max(0) + fit.verts.min(0)) / 2
    C = np.stack([-fit.R[i].T @ fit.t[i] for i in range(len(fit.names))])
    d = np.linalg.norm((C - centre)[:, [0, 2]], axis=1).mean()
    hgt = (C - centre)[:, 1].mean()
    start = math.atan2(*(C - centre)[:, [0, 2]].mean(0))
    ang = start + np.linspace(0, 2 * np.pi, n, endpoint=False)
    eyes = centre + np.stack([d * np.sin(ang), np.full(n, hgt), d * np.cos(ang)], 1)
    return _render_path(fit, eyes, side)


def orbit_frames(fit: FitResult, steps: int = 6, side: int = 320) -> list:
    """A path through the real camera positions (sorted by azimuth around the head, there and
    back), interpolated in azimuth, height and distance; each frame looks at the head."""
    centre = (fit.verts.max(0) + fit.verts.min(0)) / 2
    C = np.stack([-fit.R[i].T @ fit.t[i] for i in range(len(fit.names))]) - centre
    az = np.arctan2(C[:, 0], C[:, 2])
    order = np.argsort(az)
    cyl = np.stack([az, C[:, 1], np.linalg.norm(C[:, [0, 2]], axis=1)], 1)[order]
    path = np.concatenate([cyl, cyl[::-1][1:]]) if len(cyl) > 1 else cyl
    pts = [path[0]]
    for a, b in zip(path[:-1], path[1:]):
        for s in np.linspace(0, 1, steps + 1)[1:]:
            pts.append(a + (b - a) * s)
    p = np.asarray(pts)
    eyes = centre + np.stack([p[:, 2] * np.sin(p[:, 0]), p[:, 1], p[:, 2] * np.cos(p[:, 0])], 1)
    return _render_path(fit, eyes, side)


def _gif(path: Path, frames: list, ms: int = 80) -> Path:
    from PIL import Image
    ims = [Image.fromarray(f).quantize(colors=192, method=Image.Quantize.FASTOCTREE) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=ms, loop=0)
    return atomic_write_bytes(path, buf.getvalue())


def _fmt(x, nd=3):
    return "" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else html.escape(str(x)))


def _report_table(report: dict) -> str:
    cols = [("name", "view"), ("used", "used"), ("landmark_rmse_px", "landmark RMSE (px)"),
            ("epipolar_px_median", "epipolar median (px)"), ("epipolar_px_p90", "epipolar p90 (px)"),
            ("mask_iou", "mask IoU"), ("photometric_l1", "photometric L1"),
            ("track_reprojection_px", "track reproj. (px)"), ("reason_if_unused", "note")]
    flagged = {f["name"]: f["reason"] for f in report.get("flagged_views", [])}
    head = "".join(f"<th>{html.escape(c)}</th>" for _, c in cols) + "<th>flagged</th>"
    rows = []
    for v in report.get("views", []):
        cells = "".join(f"<td>{_fmt(v.get(k))}</td>" for k, _ in cols)
        fl = flagged.get(v["name"])
        rows.append(f"<tr{' class=flag' if fl else ''}>{cells}<td>{html.escape(fl or '')}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}figure{display:inline-block;margin:4px;text-align:center}
figure img{width:260px;border:1px solid #ccc}figcaption{font-size:12px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
tr.flag{background:#fdd}.view{border-top:1px solid #ddd;padding-top:6px}.note{color:#a00}"""


def write_viewer(folder, history=None, prep_dir=None, model_path=None, max_side: int = 512,
                 turntable: bool = True) -> Path:
    """Write index.html, heatmaps/<stem>.png and (``turntable``) turntable.gif + orbit.gif into
    the fit folder ``folder`` (report.json written). Returns index.html's path."""
    import plotly.offline

    folder = Path(folder)
    fit = load_fit(folder, prep_dir=prep_dir, model_path=model_path)
    report = fit.report or {}
    lm3 = fitted_landmarks(fit)
    fig = camera_figure(fit, report)
    views_html = []
    for i, n in enumerate(fit.names):
        panels, heat, err = _view_panels(fit, i, lm3, max_side)
        write_png(folder / "heatmaps" / f"{fit.stems[i]}.png", heat)
        figs = "".join(f"<figure><img alt='{html.escape(c)}' src='{_data_uri(im)}'><figcaption>{html.escape(c)}"
                       "</figcaption></figure>" for c, im in panels.items())
        views_html.append(f"<div class=view><h3>{html.escape(n)}</h3>{figs}</div>")
    extra = ""
    if turntable:
        _gif(folder / "turntable.gif", turntable_frames(fit))
        _gif(folder / "orbit.gif", orbit_frames(fit))
        extra = "".join(f"<figure><img style='width:320px' alt='{c}' src='data:image/gif;base64,"
                        f"{base64.b64encode((folder / f).read_bytes()).decode()}'><figcaption>{c}</figcaption></figure>"
                        for f, c in (("turntable.gif", "turntable (our renderer)"),
                                     ("orbit.gif", "orbit through the real camera positions")))
    losses = ""
    if history:
        from fitting.visualize import plot_losses
        plot_losses(history, folder / "losses.png")
    if (folder / "losses.png").is_file():
        losses = f"<img style='max-width:100%' alt='losses' src='data:image/png;base64,{base64.b64encode((folder / 'losses.png').read_bytes()).decode()}'>"
    notes = ["Fitted with the synthetic stand-in model, not FLAME."] if fit.is_standin else []
    notes += summary_warnings(report, folder)
    warn = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    gt = report.get("ground_truth")
    gt_html = "" if not gt else "<p>Ground truth errors: " + ", ".join(
        f"{html.escape(k)} {v:.3f}" for k, v in gt.items() if isinstance(v, float)) + "</p>"
    body = (f"<h1>FLAME fit: {html.escape(str(report.get('scene', folder.name)))}</h1>{warn}"
            f"<p>{report.get('num_views', len(fit.names))} views; device {html.escape(str(report.get('device', '')))}; "
            f"total time {report.get('timing_s', {}).get('total', 0):.1f} s.</p>{gt_html}"
            f"<h2>Mesh and cameras</h2>{fig.to_html(full_html=False, include_plotlyjs=False, div_id='cameras')}"
            f"<h2>Turntable</h2>{extra}<h2>Views</h2>{''.join(views_html)}"
            f"<h2>Losses</h2>{losses}<h2>Report</h2>{_report_table(report)}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>FLAME fit {html.escape(str(report.get('scene', folder.name)))}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"</head><body>{body}</body></html>")
    return atomic_write_bytes(folder / "index.html", page.encode())


# a refined focal length less certain than this is worth a warning: the cameras' distances,
# hence the scene's depth, are as uncertain
FOCAL_SIGMA_WARN_PCT = 10.0


def focal_line(focal_px: float, refined: bool, sigma_pct: float | None, source: str | None = None) -> str:
    """The summary's focal-length line; sigma_pct: the refined focal's standard error (None when
    none was computed: with ``--cameras``, or a singular problem); source: where the initial
    value came from (cameras.json's ``source``: a held ``fov`` value is a guess)."""
    if not refined:
        if source == "fov":
            return (f"  focal length: {focal_px:.1f} px (held); warning: it is --fov's guess, not a measurement: "
                    "give it (the photos' EXIF, or --cameras with a calibration) when it is known")
        return f"  focal length: {focal_px:.1f} px (held)"
    if sigma_pct is None:
        return f"  focal length: {focal_px:.1f} px (refined)"
    line = f"  focal length: {focal_px:.1f} px (refined, sigma {sigma_pct:.1f} %)"
    if sigma_pct > FOCAL_SIGMA_WARN_PCT:
        line += ("; warning: these views barely fix it, and the cameras' distances are as uncertain: give "
                 "it (the photos' EXIF, or --cameras with a calibration), or fit with SfM's tracks and more views")
    return line


def convergence_warning(conv: dict) -> str:
    """The summary's line for a geometry solve that stopped short of its optimum; conv:
    :func:`fitting.uncertainty.geometry_convergence`'s dict."""
    if conv["worst"] == "focal length":
        what = f"the focal length by {conv['focal_step_pct']:+.1f} %"
    else:
        v = next(v for v in conv["views"] if v is not None and v["name"] == conv["worst"])
        what = f"the camera of {v['name']} by {v['rotation_step_deg']:.2f} deg / {v['center_step_mm']:.1f} mm"
    return (f"  warning: the geometry solve stopped before its optimum: one more step would move {what} "
            f"({conv['step_sigma_max']:.1f} standard errors); raise --geom_lm_iters, or --geom_rounds if it "
            "is below 2 (fit_details.json geometry_convergence)")


def summary_lines(report: dict, folder) -> list:
    """A short end-of-run summary: where the result is, what was written, how good it is."""
    folder = Path(folder)
    used = [v for v in report.get("views", []) if v.get("used")]
    lines = [f"Result: {folder}"]
    if folder.is_dir():
        items = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                       if not p.name.startswith(".") and p.name not in ("checkpoint.pt", "preprocess"))
        lines.append("  wrote: " + " ".join(items))
        ex = folder / "exports"
        if ex.is_dir():
            lines.append("  exports: " + " ".join(sorted(p.name for p in ex.iterdir() if not p.name.startswith("."))))

    def stat(key, what, unit, worst=max, rows=used, note=""):
        vals = [(v[key], v["name"]) for v in rows if v.get(key) is not None]
        if not vals:
            return f"  {what}: n/a"
        x = np.array([a for a, _ in vals])
        w = worst(vals)
        return f"  {what}: mean {x.mean():.3f}{unit}, worst {w[0]:.3f}{unit} ({w[1]}){note}"
    # the RMSE of landmarks the fit left out (a detector's points on a profile) says nothing of the fit
    fitted = [v for v in used if v.get("landmarks_used", True)]
    dropped = ", ".join(v["name"] for v in used if not v.get("landmarks_used", True))
    lines += [stat("landmark_rmse_px", "landmark RMSE", " px", rows=fitted,
                   note=f", over the views whose landmarks were used (not {dropped}: report.json landmarks_not_used "
                        "says why)" if dropped else ""),
              stat("epipolar_px_median", "epipolar (median)", " px"), stat("mask_iou", "mask IoU", "", worst=min)]
    path = folder / "fit_details.json"
    details = json.loads(path.read_text()) if path.is_file() else {}
    if used and used[0].get("K") is not None and details:
        refined = bool(details["focal"]["refined"])
        lines.append(focal_line(used[0]["K"][0][0], refined, (report.get("uncertainty") or {}).get("focal_sigma_pct"),
                                details["focal"].get("source")))
    conv = details.get("geometry_convergence")
    if conv and not conv["converged"]:
        lines.append(convergence_warning(conv))
    tracks = report.get("tracks") or {}
    if tracks.get("used") is False:
        lines.append(f"  warning: SfM's tracks took no part in the fit: {tracks['why_unused']}")
    fl = report.get("flagged_views") or []
    lines.append("  flagged views: " + ("; ".join(f"{f['name']} ({f['reason']})" for f in fl) if fl else "none"))
    out = [v for v in report.get("views", []) if not v.get("used")]
    if out:
        lines.append("  left out: " + "; ".join(f"{v['name']} ({v['reason_if_unused']})" for v in out))
    if (folder / "index.html").is_file():
        lines.append(f"  look at it: {folder / 'index.html'}")
    return lines


def summary_warnings(report: dict, folder) -> list:
    """The lines of :func:`summary_lines` that warn (a loose focal length, a geometry solve that
    stopped short, unused tracks), stripped: for the fit's page and a sequence's identity."""
    return [line.strip() for line in summary_lines(report, folder) if "warning:" in line]


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m fitting.viewer", description="Write index.html, heatmaps and "
                                "the turntable for an existing fit (a run_fitting output folder).")
    p.add_argument("output_dir")
    p.add_argument("--preprocess_dir", default="", help="preprocessing folder (default: report.json's)")
    p.add_argument("--no_turntable", action="store_true", help="skip turntable.gif and orbit.gif")
    a = p.parse_args(argv)
    hist = None
    ck = Path(a.output_dir) / "checkpoint.pt"
    if ck.is_file():
        hist = torch.load(ck, map_location="cpu", weights_only=True).get("history")
    path = write_viewer(a.output_dir, history=hist, prep_dir=a.preprocess_dir or None, turntable=not a.no_turntable)
    print("\n".join(summary_lines(json.loads((Path(a.output_dir) / "report.json").read_text()), a.output_dir)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
