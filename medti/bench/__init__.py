"""Benchmarks that print their figures (``medti bench ingest|train|generate``): speed and memory targets are
checked here, not by timed tests. One module per subject:

- :mod:`medti.bench.ingest`: files/s and peak memory of ``medti prepare`` on many small DICOMs;
- :mod:`medti.bench.train`: embedding training, medti against the diffusers example's way (or the example
  script itself, run by :mod:`medti.bench.diffusers_script`);
- :mod:`medti.bench.generate`: medti's batched sampling against diffusers' pipeline one image at a time;
- :mod:`medti.bench.system`: the machine description and memory measurement they share.

No stage imports this package; the production code's one shared measurement is :mod:`medti.resources`.
"""
