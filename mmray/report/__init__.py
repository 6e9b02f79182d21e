"""The evaluation report: sections gathered from published artifacts and result files (`sections`),
drawn as PNG plots (`plots`) and one HTML page (`html`), published as `reports/evaluation/<version>`."""
from mmray.report.html import render_html
from mmray.report.plots import draw_plots
from mmray.report.sections import build_report, publish_report

__all__ = ["build_report", "draw_plots", "publish_report", "render_html"]
