"""Validating data you did not make (NCSA principle 2; docs/data-validation.md): reading data set files
(`records`), provenance manifests (`manifest`), exact snapshot comparison (`snapshot_diff`), and validation of
current data against a reference (`validate`): schema and ranges (`schema_check`), per-feature drift with
false-discovery-rate control and effect sizes (`feature_drift`) on a saved summary of the reference
(`reference_sketch`), two-sample tests of the data as a whole (`multivariate_drift`), labels and a model's
predictions (`label_shift`), duplicates and leakage (`duplicates`) and dependence on one source
(`source_dependence`)."""
