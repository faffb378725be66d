"""The IR of LM programs: typed nodes in a graph, its canonical text form and JSON round-trip."""
