"""Statistics stage: paired and unpaired proportions, equivalence with a published run, a judge's scores as its
question's rate, the method grid's comparisons.

May import: config, run (and anything below in the flow, though it needs none of it).
"""
