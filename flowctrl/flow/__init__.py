"""Pure tensor math of the unified flow (no file I/O except :mod:`flowctrl.flow.io`).

Conventions: flow ``(B, T, 2, H, W)`` float32 in pixels, channel 0 = dx (right), 1 = dy (down);
``F[:, t]`` maps reference-frame pixels to frame ``t`` and ``F[:, 0] == 0`` ("reference form").
Modules: ``sparse`` (eq. 5), ``densify`` (eq. 6-7), ``camera`` (reprojection flow, Plücker rays),
``compose`` (composition, reference <-> consecutive form), ``estimate`` (DIS / RAFT),
``strength`` (eq. 8), ``io`` (.flo/.npy/.safetensors), ``viz`` (color wheel, control overlay),
``warp`` (backward warp / splatting, owned by the kernels area).
"""
