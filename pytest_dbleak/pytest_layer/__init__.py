"""The pytest layer: the state owner (``manager``), fixtures, markers and report
editing. The only layer that imports pytest; it talks to the engine only.
"""
