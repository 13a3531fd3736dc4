"""Benchmarks, the demo and the loopback stack they run on.

Development tools: the runtime packages never import them (an import contract checks it).
"""
