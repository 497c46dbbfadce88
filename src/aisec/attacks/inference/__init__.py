"""Inference attacks: what a model reveals about its training records (membership, attributes).

- `membership`: was a record in the training set? The loss-threshold attack (Yeom et al., CSF 2018), LiRA
  online and offline (Carlini et al., S&P 2022) and RMIA (Zarifzadeh et al., ICML 2024), with the shadow
  models trained through an `aisec.core.executor.Executor`.
- `label_only`: membership from labels alone: the gap attack (Yeom et al.) and the noise-robustness attack
  (Choquette-Choo et al., ICML 2021).
- `scores`: the logit-space membership score log p_y - log sum_{j != y} p_j, which does not saturate.
- `roc`: ROC curve, AUC and TPR at low FPR (0.1 %, 1 %), and the log-log ROC chart for reports.
- `attribute`: attribute inference against imputation baselines.
"""
