"""Experiments: orchestration on top of training, the analyses, statistics and plots
(``compare``: optimizers side by side over paired seeds; ``report``: report.md). Nothing
below this package imports it."""
