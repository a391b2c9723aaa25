"""Attribution methods, one module per family: each module registers its methods on ATTRIBUTION_METHODS
(core.analyses.attribution.method), which imports every module here on its first read."""
