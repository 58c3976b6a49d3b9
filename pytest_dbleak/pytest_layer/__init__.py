"""The pytest layer: the state owner (``manager``) and each test's check (``checks``),
fixtures, markers, report editing (``verdict``) and the end of the run
(``session_report``). The only layer that imports pytest; it talks to the engine only.
"""
