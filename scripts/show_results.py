#!/usr/bin/env python3
"""Prints a `swiftops infer` result file (JSONL) as question and answer pairs, in dataset order."""
from __future__ import annotations

import json
import sys
import textwrap


def main(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        rows = sorted((json.loads(line) for line in handle if line.strip()), key=lambda row: row.get("index", 0))
    print(f"--- {path}: {len(rows)} answers ---")
    for row in rows:
        question = next((m["content"] for m in reversed(row.get("messages", [])) if m.get("role") == "user"), "")
        print("\n>>> " + "\n    ".join(str(question).splitlines()))
        print(textwrap.indent(str(row.get("response", "")).strip(), "    "))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
