"""The pages a run leaves for a person to look at: ``report.html`` (:func:`write_report_html`)
and the page of several runs side by side (:mod:`arcfast.run.html.compare`)."""
from .page import render_report, write_report_html
from .view import RunView

__all__ = ["RunView", "render_report", "write_report_html"]
