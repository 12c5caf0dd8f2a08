"""The paper's tables (tables.py), figures (figures.py) and the HTML report and saliency browser (html.py).

Plain inputs (DataFrames, arrays, paths); nothing here imports ``heartbeit_lib.pipeline``.
"""
