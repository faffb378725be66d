"""Compiler passes over the IR: prefix-sharing plans and constraint compilation to token-level automata."""
