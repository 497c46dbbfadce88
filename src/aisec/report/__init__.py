"""Reports: an assessment's findings as JSON, HTML with plots, SARIF 2.1.0, JUnit XML and a model card.

A writer only reads an `aisec.assessment.finding.Assessment`; it never runs an attack.

    from aisec.report import write_reports
    paths = write_reports(assessment, "out/")  # report.json, .html, .sarif, .junit.xml, model_card.md and .json

`write_reports` writes all formats or none. Each format can also be rendered to text alone:
`json_report.render_json`, `html.render_html`, `sarif.render_sarif`, `junit.render_junit`,
`model_card.render_model_card` and `model_card.render_model_card_json`.
Importing this package loads no plotting library: matplotlib is imported only when an HTML report draws.
"""

from aisec.report.json_report import SCHEMA_ID, load_schema, to_json_dict
from aisec.report.writer import FILE_NAMES, FORMAT_FILES, write_reports

__all__ = ["FILE_NAMES", "FORMAT_FILES", "SCHEMA_ID", "load_schema", "to_json_dict", "write_reports"]
