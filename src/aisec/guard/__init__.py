"""The guard: a secured front for a served model (`aisec guard serve`).

Per request, in order: API-key authentication (`keys.py`), per-key rate limit and row quota (`limits.py`),
input validation against the model's input spec (`inputs.py`), optional input detectors and an
out-of-distribution score (`screening.py`), the model (`model.py`), output hardening per key tier, per-client
monitoring of the query stream with escalating actions (`monitoring.py`), and an audit-log entry for every
decision (`pipeline.py` runs them; `app.py` serves them over HTTP; `config.py` is the YAML configuration).
Several workers share limits and monitor state through Redis (`shared.py`). docs/guard.md is the user's guide.
"""
