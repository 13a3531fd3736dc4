"""The whole system as child processes on loopback.

Server launchers, a Mosquitto broker and an emulated WAN, for the demo, benchmarks and tests.
"""
