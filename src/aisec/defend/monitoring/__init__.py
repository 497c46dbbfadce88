"""Run-time monitors of a served model: detectors over the stream of one client's queries."""
