"""Experiments that re-measure the BERMo paper's claims: `bermo-experiment convergence | probing | build-probing`.

Data, then statistics, then pictures: `runner` turns a configuration into runs (each a call of the one training
loop, or a frozen probe) recorded one JSON line each; `stats` turns runs into numbers; `report` turns numbers into
summary.json, summary.md and PNG plots.
"""
