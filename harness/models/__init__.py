"""Model stage: loading by pin, architecture module paths, chat format, rehearsal and tiny stand-ins, hooks, forward
passes that return logits.

May import: config, run, data.
"""
