"""Upsampling: the public `upsample_volume` (`api`) and `upsample_file` (`files`), the checks made
before any work (`checks`), the interpolation baselines (`baseline`), the learned reconstruction
(`reconstruct`) and the per-scan fit (`adapt`)."""
