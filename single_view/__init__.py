"""Single-image FLAME fitting: ``python single_view/fit.py IMAGE_OR_FOLDER``.

A thin layer over the fitting library (fitting.stages, fitting.export, fitting.visualize,
process_data): a folder of photos is fitted as ONE batch of G = N subjects with one view each
(``FitState.view_subject = arange(N)``), every image with its own shape, expression, jaw,
texture, SH light and camera. Modules:

* :mod:`single_view.options` - the shared configargparse options plus the single-image ones.
* :mod:`single_view.camera`  - perspective / weak-perspective intrinsics and DECA's camera.
* :mod:`single_view.inputs`  - image listing, landmark / mask overrides, process_data calls.
* :mod:`single_view.batch`   - :func:`fit_images`: inputs -> stages -> per-image outputs.
* :mod:`single_view.outputs` - per-image params.npz, mesh, images, report.json.
"""
