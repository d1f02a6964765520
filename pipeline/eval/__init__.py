"""Evaluation: synthetic-domain quality bars (`synthetic`, with the `mouth` reader), standard
metrics for real data (`fid`, `fvd`, `sync`, `expression`), and the speed `benchmark`."""
