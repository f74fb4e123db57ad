"""
The one markdown-table writer every generated block uses, kept free of imports so that the speed
tables (bench_runs.py) need neither torch nor the project's methods.

Usage:
    >>> print(markdown_table(["method", "acc"], [["lora", "71.5"]]))
    | method | acc |
    |---|---|
    | lora | 71.5 |
"""


def markdown_table(head, rows):
    """A markdown table: the header, its separator, then one line per row (each a list of cell strings)."""
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, rows)])
